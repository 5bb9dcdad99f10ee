//! The release bundle (scripts/package.sh): unpacked in a fresh folder, it runs `sample` and `serve` with an empty
//! environment (no venv, no LD_LIBRARY_PATH) from another working folder, and every library it loads comes from the
//! bundle except the C and C++ runtimes every Linux host has.
//!
//! Needs patchelf (.ci/run installs it; scripts/test.sh runs this test when it is on PATH). The tarball is built once
//! into cargo's test scratch folder and reused while it is newer than the binary and the script.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Libraries the bundle may take from the host: glibc and the GCC runtime.
const HOST_LIBS: [&str; 10] = [
    "linux-vdso.so",
    "ld-linux-x86-64.so",
    "libc.so",
    "libm.so",
    "libdl.so",
    "librt.so",
    "libpthread.so",
    "libutil.so",
    "libstdc++.so",
    "libgcc_s.so",
];

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The bundle tarball for the binary under test: reused when fresh, else built by scripts/package.sh.
fn tarball() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_diffuse"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/package.sh");
    let dist = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dist");
    let tarball = dist.join(format!("diffuse-{}-linux-x86_64.tar.gz", env!("CARGO_PKG_VERSION")));
    if modified(&tarball) > modified(&binary).max(modified(&script)) {
        return tarball;
    }
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .env("DIFFUSE_BIN", &binary)
        .env("DIST_DIR", &dist)
        .output()
        .expect("run scripts/package.sh");
    assert!(
        out.status.success(),
        "package.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{}packaged in {:.1} s",
        String::from_utf8_lossy(&out.stdout),
        started.elapsed().as_secs_f64()
    );
    tarball
}

/// Every `NAME => PATH` line of `ldd file` (run with an empty environment) resolves inside `root` or to a host
/// runtime library, and nothing is missing.
fn assert_self_contained(file: &Path, root: &Path) {
    let out = Command::new("ldd").arg(file).env_clear().output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("not found"),
        "ldd {}:\n{text}",
        file.display()
    );
    for line in text.lines() {
        let Some((name, rest)) = line.trim().split_once(" => ") else {
            continue;
        };
        let path = rest.split(" (").next().unwrap_or("").trim();
        let inside = Path::new(path).starts_with(root);
        let host = HOST_LIBS.iter().any(|h| name.starts_with(h));
        assert!(
            inside || host,
            "{} loads {name} from {path}, outside the bundle",
            file.display()
        );
        assert!(!(inside && host), "{name} is a host library but was bundled");
    }
}

/// Kills a child process left running by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs patchelf (scripts/test.sh runs it when patchelf is on PATH)"]
fn needs_patchelf_the_bundle_runs_from_anywhere_with_an_empty_environment() {
    let tarball = tarball();
    let unpacked = tempfile::tempdir().expect("temp dir");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "cannot unpack {}", tarball.display());
    let root = unpacked
        .path()
        .join(format!("diffuse-{}-linux-x86_64", env!("CARGO_PKG_VERSION")));
    let binary = root.join("diffuse");
    for name in ["README.md", "models/cfg-d64/model.safetensors", "licenses/diffuse.txt"] {
        assert!(root.join(name).is_file(), "{name} missing from the bundle");
    }
    assert!(
        std::fs::read_dir(root.join("licenses"))
            .expect("licenses")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("torch")),
        "libtorch's licence is missing"
    );
    assert_self_contained(&binary, &root);
    for lib in std::fs::read_dir(root.join("lib"))
        .expect("lib/")
        .filter_map(Result::ok)
    {
        assert_self_contained(&lib.path(), &root);
        assert!(
            !lib.file_name().to_string_lossy().starts_with("libtorch_cuda"),
            "the CPU bundle ships libtorch_cuda"
        );
    }

    // `env -i`: no PATH, no venv, no LD_LIBRARY_PATH, no DIFFUSE_MODELS; the working folder holds nothing.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let out = Command::new("env")
        .arg("-i")
        .arg(&binary)
        .args([
            "sample",
            "--model",
            "cfg-d64",
            "--digits",
            "3,7",
            "--sampler",
            "ddim",
            "--steps",
            "2",
        ])
        .args(["--threads", "2", "--out", "digits.png"])
        .current_dir(elsewhere.path())
        .output()
        .expect("run the bundled diffuse");
    assert!(
        out.status.success(),
        "sample failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = image::open(elsewhere.path().join("digits.png")).expect("a PNG");
    assert!(png.width() > 28);

    let mut server = KillOnDrop(
        Command::new("env")
            .arg("-i")
            .arg(&binary)
            .args(["serve", "--addr", "127.0.0.1:0", "--threads", "2"])
            .current_dir(elsewhere.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the bundled diffuse serve"),
    );
    let server = &mut server.0;
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    // The model came from the bundle's models/, found beside the executable (not from this source tree).
    // Read on a thread to the end, so the server never writes into a closed pipe.
    let stderr = server.stderr.take().expect("stderr");
    let (tx, stderr_lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let serving = stderr_lines
        .iter()
        .find(|l| l.starts_with("serving "))
        .expect("a `serving MODEL` line");
    assert!(
        serving.contains(&root.join("models/cfg-d64").display().to_string()),
        "{serving}"
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let ready = agent.get(&format!("{base}/readyz")).call().expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let mut digits = agent
        .get(&format!("{base}/api/generate?digit=5&n=2&sampler=ddim&steps=2"))
        .call()
        .expect("generate");
    assert_eq!(digits.status().as_u16(), 200);
    assert!(digits.body_mut().read_to_vec().expect("body").starts_with(b"\x89PNG"));
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = server.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "the bundled server did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0));
}

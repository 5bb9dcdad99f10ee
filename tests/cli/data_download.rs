//! `diffuse::data::download` against real HTTP: a tiny HTTP/1.1 server on 127.0.0.1 plays several broken
//! mirrors (404, an HTML page, truncated gzip, valid gzip of the wrong content) and one good mirror that
//! serves the real files from `$MNIST_DIR`, plus a port where nothing listens. Tests that need the real
//! files fail when `MNIST_DIR` is unset. The data folder's order (flag, then `MNIST_DIR`, then ./data/mnist) is
//! checked here too, with the variable set for the binary.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use diffuse::data::download::{DownloadAction, MirrorError};
use diffuse::data::mnist::{self, MNIST_MD5_UNCOMPRESSED, TEST_IMAGES};
use diffuse::data::{check_dir, download, DataError};
use flate2::write::GzEncoder;
use flate2::Compression;

/// Serves `routes` (URL path -> body) with 200, anything else with 404, until the test process exits.
/// Returns the base URL `http://127.0.0.1:PORT`.
fn serve(routes: HashMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    let routes = Arc::new(routes);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let routes = Arc::clone(&routes);
            thread::spawn(move || {
                let _ = respond(stream, &routes);
            });
        }
    });
    format!("http://{addr}")
}

fn respond(mut stream: TcpStream, routes: &HashMap<String, Vec<u8>>) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers: a GET has no body to read.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or_default();
    let (status, body): (&str, &[u8]) = match routes.get(path) {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", b"not found"),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

/// A base URL where nothing listens: bind a free port, then release it.
fn refused_mirror() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{addr}/")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).expect("gzip in memory");
    enc.finish().expect("gzip in memory")
}

/// Four broken mirrors for t10k-images, one failure mode each; they 404 every other file.
fn broken_mirror_routes() -> Vec<(&'static str, Vec<u8>)> {
    // A well-formed 10000x28x28 IDX of zeros: valid gzip, right shape, wrong MD5.
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0x27, 0x10, 0, 0, 0, 28, 0, 0, 0, 28];
    idx.resize(16 + 10_000 * 28 * 28, 0);
    let wrong_content = gzip(&idx);
    let truncated = wrong_content[..wrong_content.len() / 2].to_vec();
    vec![
        ("missing", Vec::new()),
        ("html", b"<html><body>Service unavailable</body></html>".to_vec()),
        ("truncated", truncated),
        ("wrong", wrong_content),
    ]
}

/// Starts the server with the broken mirrors (and `good` when given, mapping file name -> bytes);
/// returns the broken mirrors' base URLs and the good one's.
fn start_mirrors(good: Option<HashMap<String, Vec<u8>>>) -> (Vec<String>, String) {
    let mut routes = HashMap::new();
    let mut broken = Vec::new();
    for (prefix, body) in broken_mirror_routes() {
        if prefix != "missing" {
            routes.insert(format!("/{prefix}/{TEST_IMAGES}.gz"), body);
        }
        broken.push(prefix);
    }
    for (name, body) in good.into_iter().flatten() {
        routes.insert(format!("/good/{name}"), body);
    }
    let base = serve(routes);
    // Alternate trailing slashes: both forms must work.
    let broken = broken
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i % 2 == 0 {
                format!("{base}/{p}/")
            } else {
                format!("{base}/{p}")
            }
        })
        .collect();
    (broken, format!("{base}/good"))
}

/// The real gzipped files from `$MNIST_DIR` (gzipping raw ones); fails without it rather than pass unchecked.
fn real_gz_files() -> HashMap<String, Vec<u8>> {
    let dir = std::env::var_os("MNIST_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .expect("MNIST_DIR must point at the real MNIST files");
    let files = MNIST_MD5_UNCOMPRESSED.iter().map(|(name, _)| {
        let path = mnist::find_file(&dir, name).expect("MNIST_DIR holds all four files");
        let bytes = std::fs::read(&path).expect("read real file");
        let gz = if bytes.starts_with(&[0x1f, 0x8b]) {
            bytes
        } else {
            gzip(&bytes)
        };
        (format!("{name}.gz"), gz)
    });
    files.collect()
}

fn names_in(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    names.sort();
    names
}

#[test]
fn falls_back_past_broken_mirrors_and_verifies_every_file() {
    let good = real_gz_files();
    let (broken, good_url) = start_mirrors(Some(good));
    let mut mirrors = vec![refused_mirror()];
    mirrors.extend(broken);
    mirrors.push(good_url.clone());

    let dir = tempfile::tempdir().expect("tempdir");
    // A corrupt copy must be replaced, and a leftover from a crashed run must not survive.
    let corrupt = dir.path().join("t10k-labels-idx1-ubyte.gz");
    std::fs::write(&corrupt, b"\x1f\x8bnot really").expect("write");
    std::fs::write(dir.path().join(".t10k-images-idx3-ubyte.gz.partial"), b"stale").expect("write");

    let report = download(dir.path(), &mirrors).expect("the good mirror has every file");
    for outcome in &report.files {
        assert!(
            matches!(&outcome.action, DownloadAction::Downloaded { mirror, .. } if *mirror == good_url),
            "{outcome:?}"
        );
    }
    let mut expected: Vec<OsString> = MNIST_MD5_UNCOMPRESSED
        .iter()
        .map(|(n, _)| OsString::from(format!("{n}.gz")))
        .collect();
    expected.sort();
    assert_eq!(names_in(dir.path()), expected, "no .partial or stray file may remain");
    let check = check_dir(dir.path()).expect("dir exists");
    assert!(check.is_mnist(), "{check}");

    // Everything is now present: a second run needs no network at all.
    let again = download(dir.path(), &[refused_mirror()]).expect("nothing to fetch");
    assert!(again.files.iter().all(|o| o.action == DownloadAction::AlreadyPresent));
    assert!(again.to_string().contains("already present"));
}

#[test]
fn only_broken_mirrors_fail_with_each_reason_and_leave_nothing() {
    let (broken, _) = start_mirrors(None);
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("mnist");
    let e = download(&target, &broken).expect_err("no mirror has a valid file");
    let DataError::AllMirrorsFailed { name, attempts } = &e else {
        panic!("unexpected error: {e}");
    };
    assert_eq!(name, "t10k-images-idx3-ubyte.gz");
    assert_eq!(attempts.len(), 4);
    assert!(matches!(attempts[0].error, MirrorError::Status(404)), "{e}");
    assert!(matches!(attempts[1].error, MirrorError::NotGzip), "{e}");
    assert!(matches!(attempts[2].error, MirrorError::Corrupt(_)), "{e}");
    assert!(matches!(attempts[3].error, MirrorError::Checksum { .. }), "{e}");
    let msg = e.to_string();
    for mirror in &broken {
        assert!(msg.contains(mirror.as_str()), "{msg}");
    }
    assert_eq!(names_in(&target), Vec::<OsString>::new(), "nothing partial may remain");
}

#[test]
fn refused_connection_is_reported_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = refused_mirror();
    let e = download(dir.path(), std::slice::from_ref(&mirror)).expect_err("nothing listens");
    let DataError::AllMirrorsFailed { attempts, .. } = &e else {
        panic!("unexpected error: {e}");
    };
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].mirror, mirror);
    assert!(matches!(attempts[0].error, MirrorError::Request(_)), "{e}");
    assert_eq!(names_in(dir.path()), Vec::<OsString>::new());
}

/// `diffuse data check` looks at --data-dir, else `$MNIST_DIR`, else ./data/mnist: each level is seen by setting
/// the one above it to a folder that does not exist and reading which folder the error names.
#[test]
fn data_folder_comes_from_the_flag_then_mnist_dir_then_the_default() {
    let bin = env!("CARGO_BIN_EXE_diffuse");
    let cwd = tempfile::tempdir().expect("tempdir");
    let check = |flag: Option<&str>, env: Option<&str>| {
        let mut cmd = std::process::Command::new(bin);
        cmd.current_dir(cwd.path()).args(["data", "check"]);
        if let Some(flag) = flag {
            cmd.args(["--data-dir", flag]);
        }
        match env {
            Some(value) => cmd.env("MNIST_DIR", value),
            None => cmd.env_remove("MNIST_DIR"),
        };
        let out = cmd.output().expect("spawn diffuse");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let real = std::env::var("MNIST_DIR").expect("MNIST_DIR must point at the real MNIST files");
    let real = std::fs::canonicalize(real).expect("MNIST_DIR exists");
    // The variable alone: the real files pass the check.
    let ok = std::process::Command::new(bin)
        .args(["data", "check"])
        .env("MNIST_DIR", &real)
        .output()
        .expect("spawn diffuse");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(check(Some("/no/flag-dir"), Some("/no/env-dir")).contains("/no/flag-dir"));
    let from_env = check(None, Some("/no/env-dir"));
    assert!(from_env.contains("/no/env-dir"), "{from_env}");
    let from_default = check(None, None);
    assert!(from_default.contains("data/mnist"), "{from_default}");
    assert!(check(None, Some("")).contains("data/mnist"));
}

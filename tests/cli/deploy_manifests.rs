//! deploy/: the Kubernetes manifests and the Dockerfile agree with each other and with the server. Probe paths are
//! routes of the server's own OpenAPI document, probe ports are the container port the server listens on, the
//! Service selects the Deployment's pods, the autoscaler targets the Deployment, and every DIFFUSE_* variable set is
//! one `diffuse serve` reads. (No container engine runs here: this checks structure, not a live cluster.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn deploy(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(name: &str) -> Value {
    let parsed: serde_norway::Value =
        serde_norway::from_str(&deploy(name)).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
    serde_json::to_value(parsed).expect("YAML as JSON")
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .expect("a label map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
        .collect()
}

/// `selector` picks pods labelled `pod`: each of its pairs is among the pod's labels.
fn selects(selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_string(),
                e["value"].as_str().expect("string value").to_string(),
            )
        })
        .collect()
}

fn port_of_addr(addr: &str) -> u64 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("ADDR:PORT")
}

#[test]
fn kubernetes_manifests_fit_together_and_fit_the_server() {
    let deployment = yaml("k8s/deployment.yaml");
    let service = yaml("k8s/service.yaml");
    let hpa = yaml("k8s/hpa.yaml");
    assert_eq!(
        (deployment["apiVersion"].as_str(), deployment["kind"].as_str()),
        (Some("apps/v1"), Some("Deployment"))
    );
    assert_eq!(
        (service["apiVersion"].as_str(), service["kind"].as_str()),
        (Some("v1"), Some("Service"))
    );
    assert_eq!(hpa["kind"], "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");

    let name = deployment["metadata"]["name"].as_str().expect("name");
    let pod = &deployment["spec"]["template"];
    let pod_labels = labels(&pod["metadata"]["labels"]);
    assert!(selects(
        &labels(&deployment["spec"]["selector"]["matchLabels"]),
        &pod_labels
    ));
    assert!(
        selects(&labels(&service["spec"]["selector"]), &pod_labels),
        "the Service selects no pod"
    );

    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("port name"),
                p["containerPort"].as_u64().expect("port"),
            )
        })
        .collect();
    let env = env_of(container);
    let listen = port_of_addr(&env["DIFFUSE_ADDR"]);
    assert!(
        env["DIFFUSE_ADDR"].starts_with("0.0.0.0:"),
        "a pod must listen beyond loopback"
    );
    assert!(
        ports.values().any(|p| *p == listen),
        "no container port for DIFFUSE_ADDR"
    );

    // Probe paths are routes the server documents (and so serves); probe ports are the port it listens on.
    let document: Value = serde_json::from_str(diffuse::server::openapi_document()).expect("OpenAPI JSON");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            document["paths"][path]["get"].is_object(),
            "{path} is not a server route"
        );
        let port = match &get["port"] {
            Value::String(named) => ports[named.as_str()],
            other => other.as_u64().expect("port"),
        };
        assert_eq!(port, listen, "{probe} port");
    }
    let annotations = &pod["metadata"]["annotations"];
    assert!(document["paths"][annotations["prometheus.io/path"].as_str().expect("metrics path")].is_object());
    assert_eq!(annotations["prometheus.io/port"], listen.to_string());

    // The Service forwards to the port the server listens on.
    let target = &service["spec"]["ports"][0]["targetPort"];
    let target = match target {
        Value::String(named) => ports[named.as_str()],
        other => other.as_u64().expect("targetPort"),
    };
    assert_eq!(target, listen);

    // The pod gets time to drain before it is killed.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let drain: u64 = env["DIFFUSE_DRAIN_SECS"].parse().expect("drain secs");
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} <= DIFFUSE_DRAIN_SECS {drain}"
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);

    // The autoscaler scales this Deployment on CPU.
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (target["kind"].as_str(), target["name"].as_str()),
        (Some("Deployment"), Some(name))
    );
    assert_eq!(target["apiVersion"], deployment["apiVersion"]);
    let metric = &hpa["spec"]["metrics"][0];
    assert_eq!(
        (metric["type"].as_str(), metric["resource"]["name"].as_str()),
        (Some("Resource"), Some("cpu"))
    );
    assert!(
        container["resources"]["requests"]["cpu"].is_string(),
        "CPU utilisation needs a CPU request"
    );
    assert!(hpa["spec"]["minReplicas"].as_u64() >= Some(1));
    assert!(hpa["spec"]["maxReplicas"].as_u64() > hpa["spec"]["minReplicas"].as_u64());

    // Every variable the Deployment sets is one the binary reads (clap lists them in --help).
    let help = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["serve", "--help"])
        .output()
        .expect("diffuse serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in env.keys() {
        assert!(
            help.contains(&format!("[env: {variable}=")),
            "`diffuse serve` does not read {variable}"
        );
    }
    assert_eq!(container["args"][0], "serve");
}

#[test]
fn the_dockerfile_runs_the_bundle_unprivileged_with_a_liveness_healthcheck() {
    let dockerfile = deploy("Dockerfile");
    let instruction = |name: &str| -> Vec<String> {
        // Joins continuation lines, then keeps the instructions called `name`.
        dockerfile
            .replace("\\\n", " ")
            .lines()
            .map(str::trim)
            .filter(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l[name.len()..].trim().to_string())
            .collect()
    };
    assert!(instruction("FROM")[0].starts_with("debian:") && instruction("FROM")[0].ends_with("-slim"));
    let user = &instruction("USER")[0];
    assert!(!user.starts_with("root") && !user.starts_with("0"), "USER {user}");
    let healthcheck = &instruction("HEALTHCHECK")[0];
    assert!(healthcheck.contains("/livez"), "{healthcheck}");
    let env: BTreeMap<String, String> = instruction("ENV")
        .iter()
        .flat_map(|e| e.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let addr = env.get("DIFFUSE_ADDR").expect("ENV DIFFUSE_ADDR");
    // Pinned like the manifest's pod: same digits for a seed after a restart, no timing at start-up.
    let pod = yaml("k8s/deployment.yaml");
    let pod_env = env_of(&pod["spec"]["template"]["spec"]["containers"][0]);
    for key in ["DIFFUSE_PRECISION", "DIFFUSE_LAYOUT"] {
        assert!(
            env.contains_key(key),
            "the Dockerfile leaves {key} to a start-up measurement"
        );
        assert_eq!(
            env.get(key),
            pod_env.get(key),
            "{key}: the image and the manifest differ"
        );
    }
    let exposed: u64 = instruction("EXPOSE")[0].parse().expect("EXPOSE port");
    assert_eq!(port_of_addr(addr), exposed);
    assert!(healthcheck.contains(&format!("127.0.0.1/{exposed}")), "{healthcheck}");
    // The tarball scripts/package.sh makes, unpacked where ENTRYPOINT looks for the binary.
    assert!(instruction("ADD")[0].starts_with("diffuse-${VERSION}-linux-x86_64.tar.gz /opt/"));
    assert!(instruction("ENTRYPOINT")[0].contains("/opt/diffuse/diffuse"));
    assert_eq!(instruction("STOPSIGNAL"), ["SIGTERM"]);
    let version = instruction("ARG")
        .iter()
        .find_map(|a| a.strip_prefix("VERSION=").map(str::to_string))
        .expect("ARG VERSION");
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "the Dockerfile's default VERSION is stale"
    );
}

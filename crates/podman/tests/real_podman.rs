#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The workload identity of containers created by the real podman (each test with its own
//! storage, configuration and locks in a temporary directory), read back from podman's state
//! file while podman keeps using it.

use std::collections::BTreeMap;

use plexus_podman::sandbox::{Sandbox, SandboxOptions};
use plexus_podman::{PodmanError, PodmanState, Workload};

const IMAGE: &str = "localhost/plexus-test-busybox:1";

fn sandbox() -> (tempfile::TempDir, Sandbox) {
    let tmp = tempfile::tempdir().unwrap();
    let sb = Sandbox::new(&tmp.path().join("podman"), SandboxOptions::default()).unwrap();
    // An image label as builders add them: not part of any identity.
    sb.import_busybox(IMAGE, &["/bin/sleep", "1000"]).unwrap();
    (tmp, sb)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_container_with_labels() {
    let (_tmp, sb) = sandbox();
    let id = sb
        .podman(&[
            "create",
            "--name",
            "web-1",
            "--label",
            "app=web",
            "--label",
            "example.com/tier=front",
            "--label",
            "io.podman.annotations.note=x y",
            IMAGE,
        ])
        .unwrap();
    let state = PodmanState::open(sb.state_path());
    assert_eq!(
        state.workload(&id).unwrap(),
        Workload {
            container_name: "web-1".into(),
            pod_name: None,
            namespace: "default".into(),
            labels: labels(&[("app", "web"), ("example.com/tier", "front")]),
        }
    );
}

#[test]
fn the_namespace_label_and_no_labels() {
    let (_tmp, sb) = sandbox();
    let id = sb
        .podman(&[
            "create",
            "--name",
            "db",
            "--label",
            "io.kubernetes.pod.namespace=prod",
            "--label",
            "app=db",
            IMAGE,
        ])
        .unwrap();
    let bare = sb.podman(&["create", "--name", "bare", IMAGE]).unwrap();
    let state = PodmanState::open(sb.state_path());
    let w = state.workload(&id).unwrap();
    assert_eq!(
        (w.namespace.as_str(), w.labels),
        ("prod", labels(&[("app", "db")]))
    );
    let w = state.workload(&bare).unwrap();
    assert_eq!(
        (w.namespace.as_str(), w.labels.len(), w.endpoint_name()),
        ("default", 0, "bare")
    );
}

#[test]
fn kube_play_labels_land_on_the_pods() {
    let (tmp, sb) = sandbox();
    let yaml = tmp.path().join("rebel-base.yaml");
    std::fs::write(
        &yaml,
        format!(
            "apiVersion: apps/v1\n\
             kind: Deployment\n\
             metadata:\n  name: rebel-base\n\
             spec:\n  replicas: 2\n  selector:\n    matchLabels:\n      name: rebel-base\n\
             \x20 template:\n    metadata:\n      labels:\n        name: rebel-base\n\
             \x20   spec:\n      containers:\n      - name: rebel-base\n        image: {IMAGE}\n\
             \x20       command: [\"/bin/sleep\", \"1000\"]\n"
        ),
    )
    .unwrap();
    sb.podman(&["kube", "play", "--start=false", &yaml.display().to_string()])
        .unwrap();
    let state = PodmanState::open(sb.state_path());
    for pod in ["rebel-base-pod-0", "rebel-base-pod-1"] {
        let infra = sb
            .podman(&["pod", "inspect", "--format", "{{.InfraContainerID}}", pod])
            .unwrap();
        let w = state.workload(&infra).unwrap();
        assert_eq!(w.pod_name.as_deref(), Some(pod));
        assert_eq!(w.endpoint_name(), pod);
        assert!(w.container_name.ends_with("-infra"), "{w:?}");
        assert_eq!(
            (w.namespace.as_str(), &w.labels),
            ("default", &labels(&[("name", "rebel-base")])),
            "{w:?}"
        );
    }
}

#[test]
fn a_pod_created_by_hand() {
    let (_tmp, sb) = sandbox();
    sb.podman(&[
        "pod",
        "create",
        "--name",
        "x-wing",
        "--label",
        "class=fighter",
        "--label",
        "io.kubernetes.pod.namespace=rebels",
    ])
    .unwrap();
    let member = sb
        .podman(&[
            "create",
            "--pod",
            "x-wing",
            "--name",
            "pilot",
            "--label",
            "role=pilot",
            IMAGE,
        ])
        .unwrap();
    let infra = sb
        .podman(&[
            "pod",
            "inspect",
            "--format",
            "{{.InfraContainerID}}",
            "x-wing",
        ])
        .unwrap();
    let state = PodmanState::open(sb.state_path());
    let w = state.workload(&infra).unwrap();
    assert_eq!(
        (w.pod_name.as_deref(), w.namespace.as_str(), w.labels),
        (Some("x-wing"), "rebels", labels(&[("class", "fighter")]))
    );
    // A member container has its own labels but is listed under its pod.
    let w = state.workload(&member).unwrap();
    assert_eq!(
        (w.endpoint_name(), w.container_name.as_str(), &w.labels),
        ("x-wing", "pilot", &labels(&[("role", "pilot")]))
    );
}

#[test]
fn errors_name_the_container_and_label() {
    let (_tmp, sb) = sandbox();
    let id = sb
        .podman(&[
            "create",
            "--name",
            "bad",
            "--label",
            "app=web server",
            IMAGE,
        ])
        .unwrap();
    let state = PodmanState::open(sb.state_path());
    let err = state.workload(&id).unwrap_err();
    assert!(matches!(err, PodmanError::Label { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "container bad: label \"app\": invalid value: value \"web server\" must be letters, \
         digits, '-', '_' or '.', starting and ending with a letter or digit"
    );
    let unknown = "0".repeat(64);
    let err = state.workload(&unknown).unwrap_err().to_string();
    assert!(err.contains(&unknown), "{err}");
    assert!(
        err.contains(&sb.state_path().display().to_string()),
        "{err}"
    );
    let missing = PodmanState::open(sb.dir().join("nothing/bolt_state.db"));
    let err = missing.workload(&id).unwrap_err().to_string();
    assert!(err.contains("nothing/bolt_state.db"), "{err}");
}

//! `plexus apply`, `label`, `annotate`, `get namespaces` and `delete` against a real etcd (TLS
//! with client certificates, the cluster's admin), outside a lab: Namespace objects with their
//! labels, kubectl's three-way merge of labels and annotations on re-apply (keys set by hand
//! survive, keys the last file had and the new one lacks go), services and policies likewise,
//! pods' objects started from the labels their agent registered them with (a fake agent over
//! mutual TLS), and the refusals with their messages.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, TlsFiles};
use plexus_model::objects::LAST_APPLIED_ANNOTATION;
use plexus_test_support::{ClientCert, EtcdProcess, ServerTls};
use serde_json::{Value, json};

/// The fake agent's answer for `default/web` (registered with `app=web`); 404 for the rest.
async fn endpoint(UrlPath(id): UrlPath<String>) -> axum::response::Response {
    if id != "default/web" {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"kind": "not-found", "message": format!("no endpoint {id}")})),
        )
            .into_response();
    }
    axum::Json(json!({
        "endpoint": {
            "container-id": "c1", "id": 7, "ip": "10.1.0.7", "host-ifname": "lxc7",
            "host-mac": "02:00:00:00:00:01", "pod-mac": "02:00:00:00:00:02",
            "namespace": "default", "pod": "web", "labels": {"app": "web"}, "identity": 1234
        },
        "identity-labels": null,
        "policy": {"ingress-enforced": false, "egress-enforced": false, "entries": []}
    }))
    .into_response()
}

struct Env {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    files: std::path::PathBuf,
    etcd: EtcdBackend,
    _etcd_proc: EtcdProcess,
    _agent: common::Server,
}

impl Env {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = common::cluster_pki(dir.path());
        let server = common::server_files(&pki, "etcd");
        let admin = pki.admin();
        let root = ClientCert {
            ca_file: admin.ca.clone(),
            cert_file: admin.cert.clone(),
            key_file: admin.key.clone(),
        };
        let etcd_proc = EtcdProcess::start_tls_with(ServerTls {
            cert_file: server.cert.clone(),
            key_file: server.key.clone(),
            client_ca_file: admin.ca.clone(),
            root,
        })
        .unwrap();
        let router = axum::Router::new().route("/v1/endpoints/{id}", get(endpoint));
        let agent_files = common::server_files(&pki, "agent");
        let agent = common::serve(&agent_files, 0, router, Default::default()).await;
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "current-context: cluster1\ncontexts:\n- name: cluster1\n  cluster-id: 1\n  \
                 state-dir: {}\n  etcd-endpoints: [{}]\n  clustermesh-dir: {}\n  agents:\n  \
                 - node: node1\n    address: {}\n",
                dir.path().display(),
                etcd_proc.endpoint(),
                dir.path().join("clustermesh").display(),
                agent.addr
            ),
        )
        .unwrap();
        plexus_kvstore::install_crypto_provider();
        let etcd = EtcdBackend::connect(EtcdConfig::new(vec![etcd_proc.endpoint()]).with_tls(
            TlsFiles {
                ca_file: admin.ca,
                cert_file: admin.cert,
                key_file: admin.key,
            },
        ))
        .await
        .unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        Self {
            config,
            files,
            etcd,
            _etcd_proc: etcd_proc,
            _agent: agent,
            _dir: dir,
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let run = common::plexus(&self.config, args).await;
        assert_eq!(
            run.code, 0,
            "plexus {args:?}:\n{}{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    async fn fails(&self, args: &[&str]) -> String {
        let run = common::plexus(&self.config, args).await;
        assert_ne!(run.code, 0, "plexus {args:?} succeeded:\n{}", run.stdout);
        run.stderr
    }

    async fn apply(&self, name: &str, yaml: &str) -> String {
        let file = self.files.join(name);
        std::fs::write(&file, yaml).unwrap();
        self.ok(&["apply", "-f", file.to_str().unwrap()]).await
    }

    async fn stored(&self, key: &str) -> Option<Value> {
        self.etcd
            .get(key)
            .await
            .unwrap()
            .map(|kv| serde_json::from_slice(&kv.value).unwrap())
    }

    fn file(&self, name: &str) -> String {
        self.files.join(name).to_str().unwrap().to_string()
    }
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

const NS_KEY: &str = "plexus/objects/v1/namespaces/x";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_services_and_policies_merge_labels_as_kubectl_apply() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let env = Env::new().await;

        // A Namespace is stored with its labels, annotations and the applied record.
        let out = env
            .apply(
                "ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {ns: x, team: a}\n  annotations: {note: one}\n",
            )
            .await;
        assert_eq!(out.trim(), "namespace/x created");
        let ns = env.stored(NS_KEY).await.unwrap();
        assert_eq!(ns["kind"], "Namespace");
        assert_eq!(ns["metadata"]["labels"], json!({"ns": "x", "team": "a"}));
        assert_eq!(ns["metadata"]["annotations"]["note"], "one");
        let record: Value = serde_json::from_str(
            ns["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(record["metadata"]["labels"], json!({"ns": "x", "team": "a"}));

        // label: a new key; an existing value only with --overwrite; bad labels refused.
        assert_eq!(
            env.ok(&["label", "namespace", "x", "owner=ops"]).await.trim(),
            "namespace/x labeled"
        );
        let err = env.fails(&["label", "namespace", "x", "env=prod", "team=b"]).await;
        assert!(
            err.contains("label: namespace x already has team=a; pass --overwrite to change it"),
            "{err}"
        );
        assert!(
            env.stored(NS_KEY).await.unwrap()["metadata"]["labels"]
                .get("env")
                .is_none(),
            "nothing of a refused command is applied"
        );
        let err = env.fails(&["label", "namespace", "x", "bad=a;b"]).await;
        assert!(err.contains("label bad=\"a;b\""), "{err}");
        let err = env.fails(&["label", "namespace", "nope", "a=b"]).await;
        assert!(err.contains("namespace nope not found in cluster cluster1"), "{err}");
        env.ok(&["annotate", "namespace", "x", "by-hand=yes"]).await;

        // Re-apply without team and note: they go (the last apply wrote them); owner and
        // by-hand (set by hand) stay.
        let out = env
            .apply("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {ns: x}\n")
            .await;
        assert_eq!(out.trim(), "namespace/x configured");
        let ns = env.stored(NS_KEY).await.unwrap();
        assert_eq!(ns["metadata"]["labels"], json!({"ns": "x", "owner": "ops"}));
        assert_eq!(
            keys(&ns["metadata"]["annotations"]),
            vec!["by-hand".to_string(), LAST_APPLIED_ANNOTATION.to_string()]
        );

        // get namespaces: the stored ones and default, each with kubernetes.io/metadata.name.
        let out = env.ok(&["get", "namespaces", "-o", "json"]).await;
        let list: Value = serde_json::from_str(&out).unwrap();
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["default", "x"]);
        assert_eq!(
            list[1]["metadata"]["labels"],
            json!({"kubernetes.io/metadata.name": "x", "ns": "x", "owner": "ops"})
        );
        let text = env.ok(&["get", "namespaces"]).await;
        assert!(
            text.lines()
                .any(|l| l.starts_with("x ") && l.ends_with("kubernetes.io/metadata.name=x,ns=x,owner=ops")),
            "{text}"
        );
        // default has no object until it is labelled; then it has one.
        env.ok(&["label", "namespace", "default", "tier=base"]).await;
        let d = env.stored("plexus/objects/v1/namespaces/default").await.unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"tier": "base"}));

        // Services: an annotation set with `annotate` survives a re-apply; a label the last
        // file had and the new one lacks goes.
        let svc = |labels: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {labels}\nspec:\n  ports:\n  - port: 80\n  selector: {{app: web}}\n"
            )
        };
        assert_eq!(
            env.apply("svc.yaml", &svc("{a: '1', b: '2'}")).await.trim(),
            "service/web created"
        );
        env.ok(&["annotate", "service", "web", "service.cilium.io/global=true"])
            .await;
        env.apply("svc.yaml", &svc("{a: '1'}")).await;
        let stored = env
            .stored("plexus/objects/v1/services/default/web")
            .await
            .unwrap();
        assert_eq!(stored["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(
            stored["metadata"]["annotations"]["service.cilium.io/global"],
            "true"
        );

        // Policies: metadata merged the same way, the spec as the file has it.
        let cnp = |labels: &str| {
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: db\n  labels: {labels}\nspec:\n  endpointSelector: {{}}\n"
            )
        };
        env.apply("cnp.yaml", &cnp("{a: b, c: d}")).await;
        env.apply("cnp.yaml", &cnp("{a: b}")).await;
        let list = env.etcd.list_prefix("plexus/objects/v1/policies/").await.unwrap();
        assert_eq!(list.kvs.len(), 1);
        let p: Value = serde_json::from_slice(&list.kvs[0].value).unwrap();
        assert_eq!(p["metadata"]["labels"], json!({"a": "b"}));
        assert!(p["metadata"]["annotations"][LAST_APPLIED_ANNOTATION].is_string());
        assert_eq!(p["spec"], json!({"endpointSelector": {}}));

        // delete -f removes the Namespace object.
        assert_eq!(
            env.ok(&["delete", "-f", &env.file("ns.yaml")]).await.trim(),
            "namespace/x deleted"
        );
        assert!(env.stored(NS_KEY).await.is_none());
    })
    .await
    .expect("the test ended within its time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_outside_a_lab_start_from_their_registered_labels() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let env = Env::new().await;
        const KEY: &str = "plexus/objects/v1/pods/default/web";
        assert_eq!(
            env.ok(&["label", "pod", "web", "tier=front"]).await.trim(),
            "pod/web labeled"
        );
        let pod = env.stored(KEY).await.unwrap();
        assert_eq!(
            pod,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "web", "namespace": "default",
                                "labels": {"app": "web", "tier": "front"}}})
        );
        // From now on the stored object is what is changed.
        env.ok(&["label", "pod", "web", "app-", "tier=back", "--overwrite"])
            .await;
        env.ok(&["annotate", "pod", "web", "note=x"]).await;
        let pod = env.stored(KEY).await.unwrap();
        assert_eq!(pod["metadata"]["labels"], json!({"tier": "back"}));
        assert_eq!(pod["metadata"]["annotations"], json!({"note": "x"}));

        let err = env.fails(&["label", "pod", "ghost", "a=b"]).await;
        assert!(
            err.contains("pod default/ghost not found in cluster cluster1: no object stored and no node's agent has it"),
            "{err}"
        );
        let err = env.fails(&["label", "service", "web", "a=b"]).await;
        assert!(err.contains("label: kind \"service\" is not supported"), "{err}");
    })
    .await
    .expect("the test ended within its time limit");
}

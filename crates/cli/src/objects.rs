//! `plexus apply -f | delete -f | get | exec`: Kubernetes-shaped objects.
//!
//! Pods, Deployments and StatefulSets are run by the lab of the context, which also stores
//! each pod's object (labels, annotations) in the cluster's etcd ([`plexus_lab::workload`]); a
//! cluster of real hosts runs its workloads with podman (`podman kube play` of the same file),
//! so there they are skipped, each named in the output.
//! Namespaces are stored in the cluster's etcd (`plexus/objects/v1/namespaces/<name>`, where
//! the agents read their labels; a lab also records them); Services
//! (`plexus/objects/v1/services/<ns>/<name>`) where the apiserver's service controller reads
//! them; network policies (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)
//! under `plexus/objects/v1/policies/`, where the agents read them. All of a file's stored
//! objects are written in one transaction, each with its labels and annotations merged over the
//! live object's as `kubectl apply` merges them ([`plexus_model::apply`]). A file is parsed and
//! checked completely before anything is applied: one bad document and nothing of the file is.

// Table headers are written as literals beside their column widths, for readability.
#![allow(clippy::print_literal)]

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use plexus_kvstore::KvBackend;
use plexus_lab::lab::{Bins, LabState};
use plexus_lab::workload::{self, Workload, Workloads};
use plexus_loadbalancer::SERVICES_PREFIX;
use plexus_loadbalancer::service::Service;
use serde::{Deserialize, Serialize};

use plexus_kvstore::{Compare, EtcdBackend, Op, Txn};
use plexus_model::apply::{Metadata, apply_metadata, check_label, document_map};
use plexus_model::objects::{self, NamespaceObject};

use crate::config::Context;

/// What a file holds, checked.
pub struct Parsed {
    /// Namespaces: name and document.
    namespaces: Vec<(String, serde_json::Value)>,
    workloads: Vec<Workload>,
    /// Services and their documents (namespace filled in).
    services: Vec<(Service, serde_json::Value)>,
    policies: Vec<(plexus_policy::PolicyKey, serde_json::Value)>,
}

/// The metadata of a Kubernetes-shaped document: what the CLI reads of it is typed, the rest
/// (labels, annotations, ...) is kept as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// A Kubernetes-shaped document: its kind and metadata typed, the rest kept as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Document {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<ObjectMeta>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Parses every document of `file`; errors name the file, the document and the field.
pub fn parse(file: &Path, default_ns: &str) -> Result<Parsed> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let mut out = Parsed {
        namespaces: Vec::new(),
        workloads: Vec::new(),
        services: Vec::new(),
        policies: Vec::new(),
    };
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value = serde_json::Value::deserialize(doc)
            .with_context(|| format!("{}: document {}: not YAML", file.display(), i + 1))?;
        if value.is_null() {
            continue;
        }
        let at = |what: &str| format!("{}: document {} ({what})", file.display(), i + 1);
        let mut document = Document::deserialize(&value).with_context(|| {
            at("kind and metadata: a kind string and a metadata mapping are expected")
        })?;
        let kind = document.kind.clone().unwrap_or_default();
        let metadata = document.metadata.clone().unwrap_or_default();
        match kind.as_str() {
            "Namespace" => {
                let name = metadata
                    .name
                    .with_context(|| at("Namespace: metadata.name is required"))?;
                let object = format!("namespace {name}");
                for (k, v) in document_map(&value, "labels", &object)? {
                    check_label(&k, &v).map_err(|e| anyhow::anyhow!("{}: {e}", at(&object)))?;
                }
                document_map(&value, "annotations", &object)?;
                out.namespaces.push((name, value.clone()));
            }
            "Pod" | "Deployment" | "StatefulSet" => {
                let w = workload::workload_from(&value, default_ns).with_context(|| at(&kind))?;
                if let Some(w) = &w {
                    for (k, v) in &w.labels {
                        check_label(k, v).map_err(|e| {
                            anyhow::anyhow!(
                                "{}: pod labels: {e}",
                                at(&format!("{kind} {}", w.name))
                            )
                        })?;
                    }
                }
                out.workloads.extend(w);
            }
            "Service" => {
                let mut svc: Service =
                    serde_json::from_value(value.clone()).with_context(|| at("Service"))?;
                let mut value = value.clone();
                if metadata.namespace.is_none() {
                    svc.metadata.namespace = default_ns.to_string();
                    value["metadata"]["namespace"] = default_ns.into();
                }
                svc.global_config().with_context(|| at("Service"))?;
                out.services.push((svc, value));
            }
            k if plexus_policy::parse::is_policy_kind(k) => {
                let policy = plexus_policy::parse_value(&value, i + 1, default_ns)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                if out.policies.iter().any(|(key, _)| *key == policy.key) {
                    bail!("{}: {} is defined twice", at(k), policy.key);
                }
                if !policy.key.namespace.is_empty() {
                    document.metadata = Some(ObjectMeta {
                        namespace: Some(policy.key.namespace.clone()),
                        ..metadata
                    });
                }
                let value = serde_json::to_value(&document).with_context(|| at(k))?;
                out.policies.push((policy.key, value));
            }
            "" => bail!("{}: kind is required", at("?")),
            other => bail!("{}: kind {other} is not supported yet", at(other)),
        }
    }
    Ok(out)
}

fn lab_of(ctx: &Context) -> Result<LabState> {
    let dir = ctx
        .lab_dir
        .as_ref()
        .with_context(|| format!("context {} is not a lab cluster: pods need a lab", ctx.name))?;
    LabState::load(dir)
}

/// Outside a lab, workloads run on the cluster's hosts (podman): says which of the file's are
/// left to them and drops them from `parsed`, before anything is applied.
fn leave_workloads_to_hosts(ctx: &Context, parsed: &mut Parsed, verb: &str) {
    if ctx.lab_dir.is_some() {
        return;
    }
    for w in parsed.workloads.drain(..) {
        println!(
            "{}/{} {verb}: cluster {} runs its workloads on its hosts (podman kube play)",
            w.kind.to_lowercase(),
            w.name,
            ctx.name
        );
    }
}

/// What `apply` stores in etcd.
enum StoredKind {
    Namespace,
    Service,
    Policy,
}

/// One object `apply` stores in etcd: its key, its name in messages and output
/// (`namespace/x`), and the document as the file has it.
struct Stored {
    kind: StoredKind,
    key: String,
    object: String,
    document: serde_json::Value,
}

/// The value to store for `s` with the merged metadata.
fn stored_value(s: &Stored, meta: &Metadata) -> Result<Vec<u8>> {
    Ok(match s.kind {
        StoredKind::Namespace => {
            let name = s.document["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut ns = NamespaceObject::new(&name, meta.labels.clone());
            ns.metadata.annotations = meta.annotations.clone();
            serde_json::to_vec(&ns)?
        }
        StoredKind::Service => {
            let mut svc: Service =
                serde_json::from_value(s.document.clone()).with_context(|| s.object.clone())?;
            svc.metadata.labels = meta.labels.clone();
            svc.metadata.annotations = meta.annotations.clone();
            svc.global_config().with_context(|| s.object.clone())?;
            serde_json::to_vec(&svc)?
        }
        StoredKind::Policy => {
            let mut doc = s.document.clone();
            doc["metadata"]["labels"] = serde_json::to_value(&meta.labels)?;
            doc["metadata"]["annotations"] = serde_json::to_value(&meta.annotations)?;
            serde_json::to_vec(&doc)?
        }
    })
}

/// The labels and annotations of a stored Kubernetes-shaped value.
pub fn stored_metadata(value: &[u8], object: &str) -> Result<Metadata> {
    let v: serde_json::Value =
        serde_json::from_slice(value).with_context(|| format!("stored {object}: not JSON"))?;
    Ok(Metadata {
        labels: document_map(&v, "labels", object)?,
        annotations: document_map(&v, "annotations", object)?,
    })
}

/// Stores `items` in one transaction, each with its labels and annotations merged over the
/// live object's as `kubectl apply` does ([`plexus_model::apply`]); the transaction holds only
/// if no object changed since it was read (else it is read and merged again). Prints one line
/// per object.
async fn store_applied(etcd: &EtcdBackend, items: &[Stored]) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    for _ in 0..5 {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut lines = Vec::new();
        for s in items {
            let live = etcd
                .get(&s.key)
                .await
                .with_context(|| format!("read {} ({})", s.object, s.key))?;
            let live_meta = match &live {
                Some(kv) => {
                    compares.push(Compare::ModRevision(s.key.clone(), kv.mod_revision));
                    Some(stored_metadata(&kv.value, &s.object)?)
                }
                None => {
                    compares.push(Compare::Absent(s.key.clone()));
                    None
                }
            };
            let meta = apply_metadata(live_meta.as_ref(), &s.document, &s.object)?;
            ops.push(Op::Put {
                key: s.key.clone(),
                value: stored_value(s, &meta)?,
                lease: None,
            });
            lines.push(format!(
                "{} {}",
                s.object,
                if live.is_some() {
                    "configured"
                } else {
                    "created"
                }
            ));
        }
        if etcd
            .txn(Txn { compares, ops })
            .await
            .context("store the objects")?
        {
            for l in lines {
                println!("{l}");
            }
            return Ok(());
        }
    }
    bail!("the objects changed while being applied, again and again; try again")
}

/// `apply -f`.
pub async fn apply(ctx: &Context, file: &Path, ns: &str) -> Result<()> {
    let mut parsed = parse(file, ns)?;
    leave_workloads_to_hosts(ctx, &mut parsed, "skipped");
    let mut stored = Vec::new();
    for (name, document) in &parsed.namespaces {
        stored.push(Stored {
            kind: StoredKind::Namespace,
            key: objects::namespace_key(name),
            object: format!("namespace/{name}"),
            document: document.clone(),
        });
    }
    for (svc, document) in &parsed.services {
        stored.push(Stored {
            kind: StoredKind::Service,
            key: format!("{SERVICES_PREFIX}{}", svc.key()),
            object: format!("service/{}", svc.metadata.name),
            document: document.clone(),
        });
    }
    for (key, document) in &parsed.policies {
        stored.push(Stored {
            kind: StoredKind::Policy,
            key: plexus_policy::store_key(key),
            object: format!("{}/{}", key.kind.name().to_lowercase(), key.name),
            document: document.clone(),
        });
    }
    if !stored.is_empty() {
        let etcd = crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
        // Everything of the file that lives in etcd in one transaction: all of it applies, or
        // none.
        store_applied(&etcd, &stored).await?;
    }
    if ctx.lab_dir.is_some() && (!parsed.workloads.is_empty() || !parsed.namespaces.is_empty()) {
        let lab = lab_of(ctx)?;
        let bins = Bins::beside_current_exe()?;
        let workloads = parsed.workloads;
        let namespaces = parsed.namespaces.into_iter().map(|(n, _)| n).collect();
        let name = ctx.name.clone();
        let lines = tokio::task::spawn_blocking(move || {
            workload::apply(&lab, &name, workloads, namespaces, &bins)
        })
        .await??;
        for l in lines {
            // The namespaces' lines were printed with their objects.
            if !l.starts_with("namespace/") {
                println!("{l}");
            }
        }
    }
    Ok(())
}

/// `delete -f`.
pub async fn delete(ctx: &Context, file: &Path, ns: &str) -> Result<()> {
    let mut parsed = parse(file, ns)?;
    leave_workloads_to_hosts(ctx, &mut parsed, "skipped");
    if !parsed.policies.is_empty() {
        let etcd = crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
        for (key, _) in &parsed.policies {
            etcd.delete(&plexus_policy::store_key(key)).await?;
            println!("{}/{} deleted", key.kind.name().to_lowercase(), key.name);
        }
    }
    if !parsed.services.is_empty() {
        let etcd = crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
        for (svc, _) in &parsed.services {
            etcd.delete(&format!("{SERVICES_PREFIX}{}", svc.key()))
                .await?;
            println!("service/{} deleted", svc.metadata.name);
        }
    }
    if !parsed.namespaces.is_empty() {
        let etcd = crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
        for (name, _) in &parsed.namespaces {
            etcd.delete(&objects::namespace_key(name)).await?;
            println!("namespace/{name} deleted");
        }
        if ctx.lab_dir.is_some() {
            let lab = lab_of(ctx)?;
            let names: Vec<String> = parsed.namespaces.iter().map(|(n, _)| n.clone()).collect();
            let cluster = ctx.name.clone();
            tokio::task::spawn_blocking(move || {
                workload::forget_namespaces(&lab, &cluster, &names)
            })
            .await??;
        }
    }
    if !parsed.workloads.is_empty() {
        let lab = lab_of(ctx)?;
        let bins = Bins::beside_current_exe()?;
        let targets = parsed
            .workloads
            .iter()
            .map(|w| (w.kind.clone(), w.namespace.clone(), w.name.clone()))
            .collect();
        let name = ctx.name.clone();
        let lines =
            tokio::task::spawn_blocking(move || workload::delete(&lab, &name, targets, &bins))
                .await??;
        for l in lines {
            println!("{l}");
        }
    }
    Ok(())
}

/// `delete KIND NAME`: one object by kind and name.
pub async fn delete_named(ctx: &Context, kind: &str, name: &str, ns: &str) -> Result<()> {
    let kind = match kind.to_ascii_lowercase().as_str() {
        "service" | "services" | "svc" => {
            let etcd =
                crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
            let key = format!("{SERVICES_PREFIX}{ns}/{name}");
            if etcd.get(&key).await?.is_none() {
                anyhow::bail!("service {ns}/{name} not found in cluster {}", ctx.name);
            }
            etcd.delete(&key).await?;
            println!("service/{name} deleted");
            return Ok(());
        }
        "deployment" | "deployments" | "deploy" => "Deployment",
        "statefulset" | "statefulsets" | "sts" => "StatefulSet",
        "pod" | "pods" | "po" => "Pod",
        other => anyhow::bail!("unknown kind {other:?}: deployment, statefulset, pod or service"),
    };
    let lab = lab_of(ctx)?;
    let bins = Bins::beside_current_exe()?;
    let cluster = ctx.name.clone();
    let target = vec![(kind.to_string(), ns.to_string(), name.to_string())];
    let lines =
        tokio::task::spawn_blocking(move || workload::delete(&lab, &cluster, target, &bins))
            .await??;
    if lines.is_empty() {
        anyhow::bail!(
            "{} {ns}/{name} not found in cluster {}",
            kind.to_lowercase(),
            ctx.name
        );
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// `get KIND [NAME]`.
pub async fn get(
    ctx: &Context,
    kind: &str,
    name: Option<&str>,
    ns: &str,
    json: bool,
) -> Result<()> {
    match kind {
        "pods" | "pod" | "po" => {
            let lab = lab_of(ctx)?;
            let w = Workloads::load(&lab, &ctx.name)?;
            let pods: Vec<_> = w
                .pods
                .values()
                .filter(|p| p.namespace == ns && name.is_none_or(|n| n == p.name))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&pods)?);
            } else {
                println!("{:<32} {:<16} {:<24} {}", "NAME", "IP", "NODE", "STATUS");
                for p in pods {
                    let running = p.pid.is_some_and(plexus_lab::sys::alive);
                    println!(
                        "{:<32} {:<16} {:<24} {}",
                        p.name,
                        p.ip,
                        p.node,
                        if running { "Running" } else { "Stopped" }
                    );
                }
            }
        }
        "deployments" | "deployment" | "deploy" | "statefulsets" | "statefulset" | "sts" => {
            let lab = lab_of(ctx)?;
            let w = Workloads::load(&lab, &ctx.name)?;
            let want = if kind.starts_with("deploy") {
                "Deployment"
            } else {
                "StatefulSet"
            };
            let items: Vec<_> = w
                .workloads
                .values()
                .filter(|x| x.kind == want && x.namespace == ns && name.is_none_or(|n| n == x.name))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                println!("{:<32} {}", "NAME", "READY");
                for x in items {
                    let owner = format!("{}/{}", x.kind.to_lowercase(), x.name);
                    let n = w.pods.values().filter(|p| p.owner == owner).count();
                    println!("{:<32} {n}/{}", x.name, x.replicas);
                }
            }
        }
        "namespaces" | "namespace" | "ns" => {
            let mut all = namespaces(ctx).await?;
            if let Some(n) = name {
                all.retain(|o| o.metadata.name == n);
                if all.is_empty() {
                    bail!("namespace {n} not found in cluster {}", ctx.name);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!("{:<32} {}", "NAME", "LABELS");
                for o in all {
                    let labels: Vec<String> = o
                        .metadata
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    println!("{:<32} {}", o.metadata.name, labels.join(","));
                }
            }
        }
        "services" | "service" | "svc" => {
            let etcd =
                crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
            let list = etcd.list_prefix(&format!("{SERVICES_PREFIX}{ns}/")).await?;
            let mut items = Vec::new();
            for kv in list.kvs {
                let svc: Service = serde_json::from_slice(&kv.value)
                    .with_context(|| format!("stored service {}", kv.key))?;
                if name.is_none_or(|n| n == svc.metadata.name) {
                    items.push(svc);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                println!("{:<32} {:<16} {}", "NAME", "CLUSTER-IP", "PORTS");
                for s in items {
                    let ports: Vec<String> = s
                        .spec
                        .ports
                        .iter()
                        .map(|p| format!("{}/{}", p.port, p.protocol))
                        .collect();
                    println!(
                        "{:<32} {:<16} {}",
                        s.metadata.name,
                        s.spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into()),
                        ports.join(",")
                    );
                }
            }
        }
        other => bail!(
            "get: unknown kind {other:?} (pods, deployments, statefulsets, namespaces, services)"
        ),
    }
    Ok(())
}

/// The cluster's namespaces: the stored objects, `default`, and (in a lab) the namespaces
/// the lab made without an object (its `kube-system`, namespaces of pods); each with the label
/// `kubernetes.io/metadata.name=<name>` Kubernetes gives every namespace.
pub async fn namespaces(ctx: &Context) -> Result<Vec<NamespaceObject>> {
    let etcd = crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
    let list = etcd
        .list_prefix(objects::NAMESPACES_PREFIX)
        .await
        .context("list the namespaces")?;
    let mut all = std::collections::BTreeMap::new();
    for kv in list.kvs {
        let ns = NamespaceObject::from_kv(&kv.key, &kv.value)
            .with_context(|| format!("stored namespace {}", kv.key))?;
        all.insert(ns.metadata.name.clone(), ns);
    }
    let mut implicit = vec!["default".to_string()];
    if ctx.lab_dir.is_some() {
        let w = Workloads::load(&lab_of(ctx)?, &ctx.name)?;
        implicit.extend(w.namespaces.iter().cloned());
        implicit.extend(w.pods.values().map(|p| p.namespace.clone()));
    }
    for n in implicit {
        all.entry(n.clone())
            .or_insert_with(|| NamespaceObject::new(&n, Default::default()));
    }
    Ok(all
        .into_values()
        .map(|mut ns| {
            ns.metadata.labels.insert(
                objects::NAMESPACE_NAME_LABEL.to_string(),
                ns.metadata.name.clone(),
            );
            ns
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Parsed> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("objects.yaml");
        std::fs::write(&file, text).unwrap();
        parse(&file, "team")
    }

    #[test]
    fn policies_get_the_default_namespace_and_keep_every_field() {
        let parsed = parse_text(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: db\n  labels: {a: b}\nspec:\n  endpointSelector: {}\n---\nkind: Namespace\nmetadata: {name: team}\n",
        )
        .unwrap();
        assert_eq!(parsed.namespaces[0].0, "team");
        let (key, value) = &parsed.policies[0];
        assert_eq!(key.namespace, "team");
        assert_eq!(
            value,
            &serde_json::json!({
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "db", "namespace": "team", "labels": {"a": "b"}},
                "spec": {"endpointSelector": {}},
            })
        );
    }

    #[test]
    fn errors_name_the_document_and_field() {
        let err = format!(
            "{:#}",
            parse_text("kind: Namespace\nmetadata: {}\n").err().unwrap()
        );
        assert!(
            err.contains("document 1") && err.contains("metadata.name"),
            "{err}"
        );
        let err = format!("{:#}", parse_text("metadata: {name: x}\n").err().unwrap());
        assert!(err.contains("kind is required"), "{err}");
        let err = format!("{:#}", parse_text("kind: [1]\n").err().unwrap());
        assert!(err.contains("document 1"), "{err}");
        let err = format!(
            "{:#}",
            parse_text(
                "kind: Pod\nmetadata: {name: p, labels: {app: 'a;b'}}\nspec: {containers: [{name: c}]}\n"
            )
            .err()
            .unwrap()
        );
        assert!(
            err.contains("document 1 (Pod p): pod labels: label app=\"a;b\""),
            "{err}"
        );
        let err = format!(
            "{:#}",
            parse_text("kind: Namespace\nmetadata: {name: x, labels: {'a b': c}}\n")
                .err()
                .unwrap()
        );
        assert!(
            err.contains("document 1 (namespace x): label key \"a b\""),
            "{err}"
        );
    }
}

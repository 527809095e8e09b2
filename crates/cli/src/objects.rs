//! `plexus apply -f | delete -f | get | exec`: Kubernetes-shaped objects.
//!
//! Namespaces, Pods, Deployments and StatefulSets are run by the lab of the context; a
//! cluster of real hosts runs its workloads with podman (`podman kube play` of the same file),
//! so there they are skipped, each named in the output;
//! Services are stored in the cluster's etcd (`plexus/objects/v1/services/<ns>/<name>`) where
//! the apiserver's service controller reads them; network policies (CiliumNetworkPolicy,
//! CiliumClusterwideNetworkPolicy, NetworkPolicy) under `plexus/objects/v1/policies/`, where
//! the agents read them. A file is parsed and checked completely
//! before anything is applied: one bad document and nothing of the file is.

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

use crate::config::Context;

/// What a file holds, checked.
pub struct Parsed {
    namespaces: Vec<String>,
    workloads: Vec<Workload>,
    services: Vec<Service>,
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
                out.namespaces.push(name);
            }
            "Pod" | "Deployment" | "StatefulSet" => {
                let w = workload::workload_from(&value, default_ns).with_context(|| at(&kind))?;
                out.workloads.extend(w);
            }
            "Service" => {
                let mut svc: Service =
                    serde_json::from_value(value.clone()).with_context(|| at("Service"))?;
                if metadata.namespace.is_none() {
                    svc.metadata.namespace = default_ns.to_string();
                }
                svc.global_config().with_context(|| at("Service"))?;
                out.services.push(svc);
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
    for n in parsed.namespaces.drain(..) {
        println!("namespace/{n} skipped: cluster {} has no lab", ctx.name);
    }
}

/// `apply -f`.
pub async fn apply(ctx: &Context, file: &Path, ns: &str) -> Result<()> {
    let mut parsed = parse(file, ns)?;
    leave_workloads_to_hosts(ctx, &mut parsed, "skipped");
    if !parsed.policies.is_empty() {
        let etcd = crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
        // All policies of the file in one transaction: all of them apply, or none.
        let ops = parsed
            .policies
            .iter()
            .map(|(key, value)| {
                Ok(plexus_kvstore::Op::Put {
                    key: plexus_policy::store_key(key),
                    value: serde_json::to_vec(value)?,
                    lease: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        etcd.txn(plexus_kvstore::Txn {
            compares: vec![],
            ops,
        })
        .await
        .context("store the policies")?;
        for (key, _) in &parsed.policies {
            println!("{}/{} configured", key.kind.name().to_lowercase(), key.name);
        }
    }
    if !parsed.services.is_empty() {
        let etcd = crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
        for svc in &parsed.services {
            etcd.put(
                &format!("{SERVICES_PREFIX}{}", svc.key()),
                serde_json::to_vec(svc)?,
                None,
            )
            .await
            .with_context(|| format!("store service {}", svc.key()))?;
            println!("service/{} configured", svc.metadata.name);
        }
    }
    if !parsed.workloads.is_empty() || !parsed.namespaces.is_empty() {
        let lab = lab_of(ctx)?;
        let bins = Bins::beside_current_exe()?;
        let (workloads, namespaces) = (parsed.workloads, parsed.namespaces);
        let name = ctx.name.clone();
        let lines = tokio::task::spawn_blocking(move || {
            workload::apply(&lab, &name, workloads, namespaces, &bins)
        })
        .await??;
        for l in lines {
            println!("{l}");
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
        for svc in &parsed.services {
            etcd.delete(&format!("{SERVICES_PREFIX}{}", svc.key()))
                .await?;
            println!("service/{} deleted", svc.metadata.name);
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
            let lab = lab_of(ctx)?;
            let w = Workloads::load(&lab, &ctx.name)?;
            let mut all = vec!["default".to_string()];
            all.extend(w.namespaces.iter().cloned());
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for n in all {
                    println!("{n}");
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

/// `annotate KIND NAME KEY=VALUE|KEY- [--overwrite]` (services).
pub async fn annotate(
    ctx: &Context,
    kind: &str,
    name: &str,
    changes: &[String],
    overwrite: bool,
    ns: &str,
) -> Result<()> {
    if !matches!(kind, "service" | "services" | "svc") {
        bail!("annotate: kind {kind:?} is not supported (service)");
    }
    let etcd = crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
    let key = format!("{SERVICES_PREFIX}{ns}/{name}");
    let kv = etcd
        .get(&key)
        .await?
        .with_context(|| format!("service {ns}/{name} not found in cluster {}", ctx.name))?;
    let mut svc: Service =
        serde_json::from_slice(&kv.value).with_context(|| format!("stored service {ns}/{name}"))?;
    // Check every change before applying any.
    let mut parsed = Vec::new();
    for change in changes {
        if let Some(k) = change.strip_suffix('-') {
            parsed.push((k.to_string(), None));
        } else if let Some((k, v)) = change.split_once('=') {
            if k.is_empty() {
                bail!("annotate: {change:?}: the key is empty");
            }
            if !overwrite && svc.metadata.annotations.get(k).is_some_and(|old| old != v) {
                bail!(
                    "annotate: service {ns}/{name} already has {k}={}; pass --overwrite to change it",
                    svc.metadata.annotations[k]
                );
            }
            parsed.push((k.to_string(), Some(v.to_string())));
        } else {
            bail!("annotate: {change:?} is neither KEY=VALUE nor KEY-");
        }
    }
    for (k, v) in parsed {
        match v {
            Some(v) => svc.metadata.annotations.insert(k, v),
            None => svc.metadata.annotations.remove(&k),
        };
    }
    svc.global_config()
        .with_context(|| format!("annotate service {ns}/{name}"))?;
    let txn = plexus_kvstore::Txn {
        compares: vec![plexus_kvstore::Compare::ModRevision(
            key.clone(),
            kv.mod_revision,
        )],
        ops: vec![plexus_kvstore::Op::Put {
            key: key.clone(),
            value: serde_json::to_vec(&svc)?,
            lease: None,
        }],
    };
    if !etcd.txn(txn).await? {
        bail!("service {ns}/{name} changed meanwhile; try again");
    }
    println!("service/{name} annotated");
    Ok(())
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
        assert_eq!(parsed.namespaces, vec!["team".to_string()]);
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
    }
}

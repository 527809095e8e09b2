//! `plexus label` and `plexus annotate`: set or remove labels and annotations of the objects a
//! cluster stores (namespaces, pods, services).
//!
//! Every change (`KEY=VALUE`, `KEY-`) is checked before any is applied: changing an existing
//! value needs `--overwrite`, labels must be Kubernetes labels. The object is written with
//! compare-and-swap on the revision that was read, so a concurrent change is never lost (the
//! command fails and says so). Keys set here are not part of what `apply` last applied, so
//! re-applying a file keeps them ([`plexus_model::apply`]).
//!
//! A namespace without a stored object (`default`, or one the lab made) gets one. A pod's
//! object is `plexus/objects/v1/pods/<ns>/<name>`, which the agents follow; in a lab the pod's
//! record in `workloads.json` changes too. Outside a lab, a pod with no stored object starts
//! from the labels its node's agent registered it with.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use plexus_agent_api::ErrorKind;
use plexus_kvstore::{Compare, KvBackend, Op, Txn};
use plexus_lab::workload::{self, Workloads};
use plexus_loadbalancer::SERVICES_PREFIX;
use plexus_loadbalancer::service::Service;
use plexus_model::apply::check_label;
use plexus_model::objects::{self, NamespaceObject, PodObject};

use crate::config::Context;

/// Which map a command edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `plexus label`.
    Labels,
    /// `plexus annotate`.
    Annotations,
}

impl Field {
    fn verb(self) -> &'static str {
        match self {
            Field::Labels => "label",
            Field::Annotations => "annotate",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Field::Labels => "labeled",
            Field::Annotations => "annotated",
        }
    }
}

/// Applies `changes` (`KEY=VALUE`, `KEY-`) to `current` after checking every one: a key must
/// not be empty, labels must be Kubernetes labels, and an existing different value needs
/// `overwrite`. `object` (e.g. `pod default/web`) names the object in errors.
pub fn edit(
    field: Field,
    object: &str,
    current: &BTreeMap<String, String>,
    changes: &[String],
    overwrite: bool,
) -> Result<BTreeMap<String, String>> {
    let verb = field.verb();
    let mut parsed = Vec::new();
    for change in changes {
        if let Some(k) = change.strip_suffix('-')
            && !change.contains('=')
        {
            if k.is_empty() {
                bail!("{verb}: {change:?}: the key is empty");
            }
            parsed.push((k.to_string(), None));
        } else if let Some((k, v)) = change.split_once('=') {
            if k.is_empty() {
                bail!("{verb}: {change:?}: the key is empty");
            }
            if field == Field::Labels {
                check_label(k, v).map_err(|e| anyhow::anyhow!("{verb}: {e}"))?;
            }
            if !overwrite && current.get(k).is_some_and(|old| old != v) {
                bail!(
                    "{verb}: {object} already has {k}={}; pass --overwrite to change it",
                    current[k]
                );
            }
            parsed.push((k.to_string(), Some(v.to_string())));
        } else {
            bail!("{verb}: {change:?} is neither KEY=VALUE nor KEY-");
        }
    }
    let mut out = current.clone();
    for (k, v) in parsed {
        match v {
            Some(v) => out.insert(k, v),
            None => out.remove(&k),
        };
    }
    Ok(out)
}

/// `label|annotate KIND NAME CHANGES... [--overwrite] [-n NS]`.
pub async fn run(
    ctx: &Context,
    field: Field,
    kind: &str,
    name: &str,
    changes: &[String],
    overwrite: bool,
    ns: &str,
) -> Result<()> {
    let verb = field.verb();
    let kind = match (kind.to_ascii_lowercase().as_str(), field) {
        ("namespace" | "namespaces" | "ns", _) => "namespace",
        ("pod" | "pods" | "po", _) => "pod",
        ("service" | "services" | "svc", Field::Annotations) => "service",
        (other, Field::Labels) => bail!("label: kind {other:?} is not supported (pod, namespace)"),
        (other, Field::Annotations) => {
            bail!("annotate: kind {other:?} is not supported (service, pod, namespace)")
        }
    };
    let etcd = crate::clustermesh::admin_etcd(ctx, std::time::Duration::from_secs(10)).await?;
    let (object, key) = match kind {
        "namespace" => (format!("namespace {name}"), objects::namespace_key(name)),
        "pod" => (format!("pod {ns}/{name}"), objects::pod_key(ns, name)),
        _ => (
            format!("service {ns}/{name}"),
            format!("{SERVICES_PREFIX}{ns}/{name}"),
        ),
    };
    let live = etcd
        .get(&key)
        .await
        .with_context(|| format!("read {object} ({key})"))?;
    let compare = match &live {
        Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
        None => Compare::Absent(key.clone()),
    };
    let pick = |labels: &mut BTreeMap<String, String>,
                annotations: &mut BTreeMap<String, String>|
     -> Result<()> {
        let map = match field {
            Field::Labels => labels,
            Field::Annotations => annotations,
        };
        *map = edit(field, &object, map, changes, overwrite)?;
        Ok(())
    };
    let (value, lab_pod) = match kind {
        "namespace" => {
            let mut obj = match &live {
                Some(kv) => NamespaceObject::from_kv(&kv.key, &kv.value)
                    .with_context(|| format!("stored {object}"))?,
                None => {
                    let known = crate::objects::namespaces(ctx).await?;
                    if !known.iter().any(|n| n.metadata.name == name) {
                        bail!(
                            "namespace {name} not found in cluster {} (apply a Namespace first)",
                            ctx.name
                        );
                    }
                    NamespaceObject::new(name, BTreeMap::new())
                }
            };
            if field == Field::Labels
                && changes
                    .iter()
                    .any(|c| c.starts_with(&format!("{}=", objects::NAMESPACE_NAME_LABEL)))
            {
                bail!(
                    "label: {} is the namespace's name, set by the cluster",
                    objects::NAMESPACE_NAME_LABEL
                );
            }
            let m = &mut obj.metadata;
            pick(&mut m.labels, &mut m.annotations)?;
            (serde_json::to_vec(&obj)?, None)
        }
        "pod" => {
            let lab_pod = match &ctx.lab_dir {
                Some(dir) => {
                    let lab = plexus_lab::lab::LabState::load(dir)?;
                    let w = Workloads::load(&lab, &ctx.name)?;
                    let pod = w
                        .pods
                        .get(&format!("{ns}/{name}"))
                        .cloned()
                        .with_context(|| {
                            format!("pod {ns}/{name} not found in cluster {}", ctx.name)
                        })?;
                    Some((lab, pod))
                }
                None => None,
            };
            let mut obj = match (&live, &lab_pod) {
                (Some(kv), _) => PodObject::from_kv(&kv.key, &kv.value)
                    .with_context(|| format!("stored {object}"))?,
                (None, Some((_, pod))) => workload::pod_object(pod),
                (None, None) => PodObject::new(ns, name, registered_labels(ctx, ns, name).await?),
            };
            let m = &mut obj.metadata;
            pick(&mut m.labels, &mut m.annotations)?;
            let value = serde_json::to_vec(&obj)?;
            (value, lab_pod.map(|(lab, _)| (lab, obj)))
        }
        _ => {
            let kv = live.as_ref().with_context(|| {
                format!("service {ns}/{name} not found in cluster {}", ctx.name)
            })?;
            let mut svc: Service = serde_json::from_slice(&kv.value)
                .with_context(|| format!("stored service {ns}/{name}"))?;
            let m = &mut svc.metadata;
            pick(&mut m.labels, &mut m.annotations)?;
            svc.global_config()
                .with_context(|| format!("{verb} service {ns}/{name}"))?;
            (serde_json::to_vec(&svc)?, None)
        }
    };
    let txn = Txn {
        compares: vec![compare],
        ops: vec![Op::Put {
            key: key.clone(),
            value,
            lease: None,
        }],
    };
    if !etcd
        .txn(txn)
        .await
        .with_context(|| format!("write {key}"))?
    {
        bail!("{object} changed meanwhile; try again");
    }
    if let Some((lab, obj)) = lab_pod {
        let cluster = ctx.name.clone();
        let (ns, name) = (ns.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || {
            workload::set_pod_metadata(
                &lab,
                &cluster,
                &ns,
                &name,
                obj.metadata.labels,
                obj.metadata.annotations,
            )
        })
        .await??;
    }
    println!("{kind}/{name} {}", field.done());
    Ok(())
}

/// The labels pod `ns/name` was registered with, from the agent of the context's node that
/// has it.
async fn registered_labels(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, String>> {
    let mut failures = Vec::new();
    for a in &ctx.agents {
        let (_, client) = crate::node::agent(ctx, Some(&a.node))?;
        match client.endpoint(&format!("{ns}/{name}")).await {
            Ok(v) => return Ok(v.endpoint.labels),
            Err(e) if e.kind() == Some(ErrorKind::NotFound) => {}
            Err(e) => failures.push(format!("{:#}", crate::node::ask_error(&a.node, e))),
        }
    }
    if failures.is_empty() {
        bail!(
            "pod {ns}/{name} not found in cluster {}: no object stored and no node's agent has it",
            ctx.name
        )
    }
    bail!(
        "pod {ns}/{name} not found in cluster {}: no object stored, and not every node answered: {}",
        ctx.name,
        failures.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_change_is_checked_before_any_is_applied() {
        let current = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let err = edit(
            Field::Labels,
            "pod default/p",
            &current,
            &changes(&["tier=front", "app=db"]),
            false,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "label: pod default/p already has app=web; pass --overwrite to change it"
        );
        let out = edit(
            Field::Labels,
            "pod default/p",
            &current,
            &changes(&["tier=front", "app=db"]),
            true,
        )
        .unwrap();
        assert_eq!(out["app"], "db");
        assert_eq!(out["tier"], "front");
        let out = edit(
            Field::Labels,
            "pod default/p",
            &current,
            &changes(&["app-", "app=web"]),
            false,
        );
        assert!(out.is_ok(), "the same value needs no --overwrite");
    }

    #[test]
    fn bad_changes_are_named() {
        let none = BTreeMap::new();
        let err = |f, c: &str| {
            edit(f, "namespace x", &none, &changes(&[c]), false)
                .unwrap_err()
                .to_string()
        };
        assert!(err(Field::Labels, "a=b;c").contains("label a=\"b;c\""));
        assert_eq!(
            err(Field::Annotations, "=v"),
            "annotate: \"=v\": the key is empty"
        );
        assert_eq!(
            err(Field::Labels, "oops"),
            "label: \"oops\" is neither KEY=VALUE nor KEY-"
        );
        // Annotations take any value.
        assert!(
            edit(
                Field::Annotations,
                "x",
                &none,
                &changes(&["a=b;c=d"]),
                false
            )
            .is_ok()
        );
        // A value ending with '-' is a value, not a removal.
        let out = edit(
            Field::Annotations,
            "x",
            &none,
            &changes(&["note=a-"]),
            false,
        )
        .unwrap();
        assert_eq!(out["note"], "a-");
    }
}

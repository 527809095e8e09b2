//! Where a pod's identity labels come from: the cluster's Namespace and Pod objects.
//!
//! The agent mirrors `plexus/objects/v1/namespaces/` and `plexus/objects/v1/pods/` of its own
//! cluster ([`crate::shell::sources::follow_objects`]) into an [`ObjectLabels`]. A local
//! endpoint's identity labels are [`pod_identity_labels`] of its namespace, that namespace's
//! labels (none when no Namespace object is stored) and its pod labels: the Pod object's when
//! one is stored for (namespace, pod), else the labels its registration carried (CNI arguments,
//! podman). A stored object that does not parse, or whose name does not match its key, is
//! refused (logged with its key) and counts as absent, as a deleted one does.
//!
//! When that set changes for a running endpoint, [`crate::endpoints::Endpoints::relabel`]
//! moves it to a new identity, make-before-break (see there).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use plexus_agent_api::EndpointInfo;
use plexus_model::labels::{Label, Labels, NAMESPACE_LABEL};
use plexus_model::objects::{NamespaceObject, PodObject, pod_identity_labels};
use tokio::sync::watch;

/// A label map (`key -> value`).
pub type LabelMap = BTreeMap<String, String>;

/// The labels of the cluster's Namespace and Pod objects, as mirrored from the kvstore.
#[derive(Debug, Default)]
pub struct ObjectLabels {
    namespaces: BTreeMap<String, LabelMap>,
    /// By (namespace, pod).
    pods: BTreeMap<(String, String), LabelMap>,
    namespaces_synced: bool,
    pods_synced: bool,
}

/// The mirror, shared by the task that follows the objects and the endpoint manager.
#[derive(Clone, Debug)]
pub struct SharedObjects {
    objects: Arc<Mutex<ObjectLabels>>,
    /// Whether the mirror is listed (both prefixes).
    synced: Arc<watch::Sender<bool>>,
}

impl Default for SharedObjects {
    fn default() -> Self {
        Self {
            objects: Arc::default(),
            synced: Arc::new(watch::channel(false).0),
        }
    }
}

impl SharedObjects {
    /// Locks the mirror (never across an await).
    pub fn lock(&self) -> MutexGuard<'_, ObjectLabels> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the waiters of [`SharedObjects::wait_synced`] when the mirror is listed.
    pub fn publish_synced(&self) {
        if self.lock().synced() {
            self.synced.send_replace(true);
        }
    }

    /// Waits until the mirror is listed, at most `limit`; whether it is.
    pub async fn wait_synced(&self, limit: Duration) -> bool {
        let mut rx = self.synced.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|synced| *synced))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// What a pod's identity is made of: its pod labels and its namespace's labels, and the
/// labels its registration carried when the Pod object's replaced them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLabels {
    /// The pod's labels (its Pod object's, or its registration's).
    pub pod: LabelMap,
    /// Its namespace's labels (empty without a Namespace object).
    pub namespace: LabelMap,
    /// The registration's labels when they differ from `pod`.
    pub registered: Option<LabelMap>,
}

impl PodLabels {
    /// The identity labels of a pod with these labels in namespace `namespace` (without the
    /// cluster label, which the allocator adds).
    pub fn identity_labels(&self, namespace: &str) -> Labels {
        pod_identity_labels(namespace, &self.namespace, &self.pod)
    }

    /// What an endpoint's state says its labels are; `None` for an endpoint restored from an
    /// agent older than namespace labels (its identity did not carry them).
    pub fn of(ep: &EndpointInfo) -> Option<Self> {
        Some(Self {
            pod: ep.labels.clone(),
            namespace: ep.namespace_labels.clone()?,
            registered: ep.registered_labels.clone(),
        })
    }

    /// Writes these labels into an endpoint's state.
    pub fn store(&self, ep: &mut EndpointInfo) {
        ep.labels = self.pod.clone();
        ep.namespace_labels = Some(self.namespace.clone());
        ep.registered_labels = self.registered.clone();
    }
}

/// The identity labels an endpoint's state gives it: as [`PodLabels::identity_labels`], or for
/// an endpoint restored from an older agent's state, its labels and namespace only (what that
/// agent allocated, so that the restored endpoint keeps its identity until it is relabelled).
pub fn endpoint_identity_labels(ep: &EndpointInfo) -> Labels {
    match PodLabels::of(ep) {
        Some(labels) => labels.identity_labels(&ep.namespace),
        None => {
            let mut out = Labels::new();
            for (k, v) in &ep.labels {
                out.insert(Label::k8s(k.clone(), v.clone()));
            }
            out.insert(Label::k8s(NAMESPACE_LABEL, &ep.namespace));
            out
        }
    }
}

/// The labels the registration of an endpoint carried.
pub fn registered_labels(ep: &EndpointInfo) -> &LabelMap {
    ep.registered_labels.as_ref().unwrap_or(&ep.labels)
}

impl ObjectLabels {
    /// A Namespace object was stored; whether its labels changed.
    pub fn namespace_upsert(&mut self, ns: NamespaceObject) -> bool {
        let labels = ns.metadata.labels;
        self.namespaces.insert(ns.metadata.name, labels.clone()) != Some(labels)
    }

    /// A Namespace object is gone (or was refused); whether it had been known.
    pub fn namespace_delete(&mut self, name: &str) -> bool {
        self.namespaces.remove(name).is_some()
    }

    /// A Pod object was stored; whether its labels changed.
    pub fn pod_upsert(&mut self, pod: PodObject) -> bool {
        let key = (pod.metadata.namespace, pod.metadata.name);
        let labels = pod.metadata.labels;
        self.pods.insert(key, labels.clone()) != Some(labels)
    }

    /// A Pod object (`<namespace>/<name>`) is gone (or was refused); whether it had been known.
    pub fn pod_delete(&mut self, namespace: &str, name: &str) -> bool {
        self.pods
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some()
    }

    /// The Namespace objects are listed.
    pub fn namespaces_synced(&mut self) {
        self.namespaces_synced = true;
    }

    /// The Pod objects are listed.
    pub fn pods_synced(&mut self) {
        self.pods_synced = true;
    }

    /// Whether both prefixes are listed: only then does the agent relabel what it runs (a
    /// restarted agent must not move its pods on a half-read mirror).
    pub fn synced(&self) -> bool {
        self.namespaces_synced && self.pods_synced
    }

    /// The labels of namespace `namespace` (empty when no object is stored).
    pub fn namespace_labels(&self, namespace: &str) -> LabelMap {
        self.namespaces.get(namespace).cloned().unwrap_or_default()
    }

    /// The labels of pod `namespace/pod`'s object, if one is stored.
    pub fn pod_labels(&self, namespace: &str, pod: &str) -> Option<&LabelMap> {
        self.pods.get(&(namespace.to_string(), pod.to_string()))
    }

    /// What pod `namespace/pod`, registered with `registered` labels, is labelled with now.
    pub fn pod(&self, namespace: &str, pod: &str, registered: &LabelMap) -> PodLabels {
        let labels = self
            .pod_labels(namespace, pod)
            .unwrap_or(registered)
            .clone();
        PodLabels {
            registered: (&labels != registered).then(|| registered.clone()),
            pod: labels,
            namespace: self.namespace_labels(namespace),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> LabelMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_pod_object_wins_over_the_registration_and_the_namespace_adds_its_labels() {
        let mut o = ObjectLabels::default();
        let registered = map(&[("app", "web")]);
        let p = o.pod("x", "a", &registered);
        assert_eq!(
            p,
            PodLabels {
                pod: registered.clone(),
                namespace: LabelMap::new(),
                registered: None
            }
        );
        assert_eq!(
            p.identity_labels("x").to_kvstore_string(),
            "k8s:app=web;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x;\
             k8s:io.kubernetes.pod.namespace=x;"
        );
        assert!(o.namespace_upsert(NamespaceObject::new("x", map(&[("team", "t1")]))));
        assert!(!o.namespace_upsert(NamespaceObject::new("x", map(&[("team", "t1")]))));
        assert!(o.pod_upsert(PodObject::new("x", "a", map(&[("app", "db")]))));
        let p = o.pod("x", "a", &registered);
        assert_eq!(p.pod, map(&[("app", "db")]));
        assert_eq!(p.namespace, map(&[("team", "t1")]));
        assert_eq!(p.registered, Some(registered.clone()));
        assert_eq!(
            p.identity_labels("x").to_kvstore_string(),
            "k8s:app=db;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x;\
             k8s:io.cilium.k8s.namespace.labels.team=t1;k8s:io.kubernetes.pod.namespace=x;"
        );
        // Objects gone: back to the registration's labels, no namespace labels.
        assert!(o.pod_delete("x", "a"));
        assert!(o.namespace_delete("x"));
        assert!(!o.namespace_delete("x"));
        assert_eq!(o.pod("x", "a", &registered).pod, registered);
        assert!(o.pod("x", "a", &registered).namespace.is_empty());
    }

    #[test]
    fn synced_once_both_prefixes_are_listed() {
        let mut o = ObjectLabels::default();
        o.namespaces_synced();
        assert!(!o.synced());
        o.pods_synced();
        assert!(o.synced());
    }

    #[test]
    fn an_endpoint_of_an_older_agent_keeps_the_identity_it_had() {
        let ep: EndpointInfo = serde_json::from_str(
            r#"{"container-id":"c","id":1,"ip":"10.0.0.2","host-ifname":"v","host-mac":"",
                "pod-mac":"","namespace":"x","pod":"a","labels":{"app":"web"},"identity":300}"#,
        )
        .unwrap();
        assert_eq!(PodLabels::of(&ep), None);
        assert_eq!(
            endpoint_identity_labels(&ep).to_kvstore_string(),
            "k8s:app=web;k8s:io.kubernetes.pod.namespace=x;"
        );
        let mut ep = ep;
        let now = PodLabels {
            pod: map(&[("app", "web")]),
            namespace: map(&[("team", "t1")]),
            registered: None,
        };
        now.store(&mut ep);
        assert_eq!(PodLabels::of(&ep), Some(now.clone()));
        assert_eq!(endpoint_identity_labels(&ep), now.identity_labels("x"));
        assert_eq!(registered_labels(&ep), &map(&[("app", "web")]));
    }
}

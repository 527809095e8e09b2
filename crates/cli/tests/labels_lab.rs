//! Pods' objects and labels in a lab, as root: one cluster of two nodes. `apply` of a
//! Namespace and a Deployment stores the Namespace object and one Pod object per pod in the
//! cluster's etcd (kube-dns's too); `plexus label pod` changes a pod's labels in
//! `workloads.json` and in its object; re-applying the Deployment with other template labels
//! changes its existing pods' labels in place (same process, same address) by kubectl's
//! three-way merge, keeping what was set by hand; scaling down and deleting remove the pods'
//! objects. (That the agents follow these objects is the agent's test.)
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use plexus_lab::lab::LabState;
use plexus_model::objects::{NAMESPACES_PREFIX, PODS_PREFIX, PodObject};
use plexus_test_support::lab::{Lab, run_lab};
use serde_json::{Value, json};

const LAB: &str = "clusters:
- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}
routing: tunnel
";

fn web(replicas: u32, labels: &str) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {{team: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: {replicas}
  template:
    metadata:
      labels: {labels}
      annotations: {{note: one}}
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: 80
"
    )
}

/// The Pod objects stored in cluster1's etcd, by `namespace/name`.
fn pod_objects(lab: &Lab) -> BTreeMap<String, PodObject> {
    let state = LabState::load(lab.dir()).unwrap();
    let c = state.cluster("cluster1").unwrap();
    plexus_lab::kv::list(c, PODS_PREFIX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let obj = PodObject::from_kv(&k, &v).unwrap();
            (
                format!("{}/{}", obj.metadata.namespace, obj.metadata.name),
                obj,
            )
        })
        .collect()
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).unwrap()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn pods_objects_follow_apply_label_and_delete() {
    run_lab("labels", Duration::from_secs(300), |lab| {
        lab.up(lab.write("lab.yaml", LAB), &[]);
        let file = lab.write("web.yaml", &web(2, "{app: web, tier: front}"));
        let file = file.to_str().unwrap();
        let out = lab.ok(&["apply", "-f", file]);
        assert!(out.contains("namespace/shop created"), "{out}");
        assert!(out.contains("deployment/web created"), "{out}");

        // The Namespace object and one Pod object per pod, kube-dns's included.
        let state = LabState::load(lab.dir()).unwrap();
        let c = state.cluster("cluster1").unwrap();
        let ns = plexus_lab::kv::list(c, NAMESPACES_PREFIX).unwrap();
        assert_eq!(ns.len(), 1);
        let ns: Value = serde_json::from_slice(&ns[0].1).unwrap();
        assert_eq!(ns["metadata"]["labels"], json!({"team": "shop"}));
        let pods = lab.pods("cluster1", "shop");
        assert_eq!(pods.len(), 2);
        let objs = pod_objects(&lab);
        assert!(
            objs.keys().any(|k| k.starts_with("kube-system/kube-dns-")),
            "{objs:?}"
        );
        for p in &pods {
            let obj = &objs[&format!("shop/{}", p["name"].as_str().unwrap())];
            assert_eq!(
                obj.metadata.labels,
                map(&[("app", "web"), ("tier", "front")])
            );
            assert_eq!(obj.metadata.annotations, map(&[("note", "one")]));
        }
        let (first, second) = (
            pods[0]["name"].as_str().unwrap().to_string(),
            pods[1]["name"].as_str().unwrap().to_string(),
        );

        // `label pod`: the lab's record and the object.
        let out = lab.ok(&["label", "pod", &first, "owner=ops", "-n", "shop"]);
        assert_eq!(out.trim(), format!("pod/{first} labeled"));
        let refused = lab.plexus(&["label", "pod", &first, "tier=back", "-n", "shop"]);
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr)
                .contains(&format!("label: pod shop/{first} already has tier=front")),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        let p = lab.json(&["get", "pods", &first, "-n", "shop", "-o", "json"]);
        assert_eq!(
            labels(&p[0]["labels"]),
            map(&[("app", "web"), ("owner", "ops"), ("tier", "front")])
        );
        assert_eq!(
            pod_objects(&lab)[&format!("shop/{first}")].metadata.labels,
            map(&[("app", "web"), ("owner", "ops"), ("tier", "front")])
        );

        // Re-apply with other template labels: the pods change in place, by the three-way
        // merge (tier goes, version comes, owner stays), with the same process and address.
        let before: BTreeMap<String, Value> = pods
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
            .collect();
        lab.write("web.yaml", &web(2, "{app: web, version: v2}"));
        let out = lab.ok(&["apply", "-f", file]);
        assert!(out.contains(&format!("pod/{first} relabeled")), "{out}");
        assert!(out.contains("deployment/web configured"), "{out}");
        let objs = pod_objects(&lab);
        for p in lab.pods("cluster1", "shop") {
            let name = p["name"].as_str().unwrap();
            assert_eq!(p["pid"], before[name]["pid"], "{name} was not restarted");
            assert_eq!(p["ip"], before[name]["ip"]);
            let want = if name == first {
                map(&[("app", "web"), ("owner", "ops"), ("version", "v2")])
            } else {
                map(&[("app", "web"), ("version", "v2")])
            };
            assert_eq!(labels(&p["labels"]), want, "{name} in workloads.json");
            assert_eq!(
                objs[&format!("shop/{name}")].metadata.labels,
                want,
                "{name}'s object"
            );
        }

        // Scaling down removes the surplus pod's object; deleting removes the rest.
        lab.write("web.yaml", &web(1, "{app: web, version: v2}"));
        lab.ok(&["apply", "-f", file]);
        let left: Vec<String> = lab
            .pods("cluster1", "shop")
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(left.len(), 1);
        let objs = pod_objects(&lab);
        let shop: Vec<&String> = objs.keys().filter(|k| k.starts_with("shop/")).collect();
        assert_eq!(shop, vec![&format!("shop/{}", left[0])]);
        assert!(left[0] == first || left[0] == second);
        let out = lab.ok(&["delete", "-f", file]);
        assert!(out.contains("namespace/shop deleted"), "{out}");
        assert!(
            !pod_objects(&lab).keys().any(|k| k.starts_with("shop/")),
            "no object of a deleted pod is left"
        );
        assert!(
            plexus_lab::kv::list(c, NAMESPACES_PREFIX)
                .unwrap()
                .is_empty()
        );
    });
}

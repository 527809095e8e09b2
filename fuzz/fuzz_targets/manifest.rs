//! A manifest file given to `plexus apply -f`: YAML documents, each read as the CLI reads it
//! (kind, metadata labels and annotations merged as `kubectl apply` does, workloads, Services
//! and their annotations, network policies).
#![no_main]
use libfuzzer_sys::fuzz_target;
use plexus_model::apply::{apply_metadata, check_label, document_map};
use serde::Deserialize as _;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let Ok(value) = serde_json::Value::deserialize(doc) else {
            return;
        };
        let kind = value["kind"].as_str().unwrap_or_default();
        if let Ok(labels) = document_map(&value, "labels", "object") {
            for (k, v) in &labels {
                let _ = check_label(k, v);
            }
        }
        if let Ok(first) = apply_metadata(None, &value, "object") {
            // Re-applying the same document over the result: its record is read back.
            let _ = apply_metadata(Some(&first), &value, "object");
        }
        match kind {
            "Pod" | "Deployment" | "StatefulSet" => {
                let _ = plexus_lab::workload::workload_from(&value, "default");
            }
            "Service" => {
                if let Ok(svc) =
                    serde_json::from_value::<plexus_loadbalancer::service::Service>(value.clone())
                {
                    let _ = svc.global_config();
                }
            }
            k if plexus_policy::parse::is_policy_kind(k) => {
                let _ = plexus_policy::parse_value(&value, i + 1, "default");
            }
            _ => {}
        }
    }
});

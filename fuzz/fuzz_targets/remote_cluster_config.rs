//! A remote cluster's configuration (`cilium/cluster-config/<cluster>`): the cluster's name
//! on the first line, then the JSON value, checked against our mesh as a consumer checks it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plexus_clustermesh::validate::{ClusterIds, check_remote_config};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::config::CiliumClusterConfig;

fuzz_target!(|data: &[u8]| {
    let (name, value) = plexus_fuzz::key_value(data);
    let Ok(config) = CiliumClusterConfig::from_json(&name, value) else {
        return;
    };
    let _ = config.max_connected_clusters();
    for max in [MaxConnectedClusters::Max255, MaxConnectedClusters::Max511] {
        let Ok(local) = ClusterInfo::new("cluster1", 1, max) else {
            return;
        };
        let mut ids = ClusterIds::new(&local);
        let _ = check_remote_config(&local, &name, &config, &mut ids);
    }
});

//! The lab: a whole mesh of clusters built out of network namespaces on one Linux host.
//!
//! [`spec`] reads the lab file; [`lab`] brings the lab up and down and fails a cluster on
//! purpose ([`lab::stop`] / [`lab::start`]); [`workload`] runs pods (Pods, Deployments,
//! StatefulSets) through the real CNI plugin, or as podman containers ([`podman`], the lab
//! file's `runtime: podman`); [`serve`] is the built-in server of pods without
//! a command; [`dns`] gives every cluster its `kube-dns` and every pod its resolv.conf; [`etcd`] runs a cluster's etcd as several members (`etcd: {members: 3}`); [`kv`] writes to a cluster's etcd (the kube-dns Service, pods' objects); [`chaos`] is the chaos soak (traffic while components are killed, then the datapath checked against the stores); [`bench`] measures request/response rates for the benchmarks; [`scale`] is the scale harness (simulated remote clusters consumed by one real agent through KVStoreMesh); [`sys`] holds the host operations (namespaces, links, processes, mounts); [`wireguard`] runs each node's WireGuard device (`encryption: wireguard`); [`outside`] is the network outside every cluster, with an authoritative DNS server and HTTP servers (`outside:` in the lab file).

pub mod bench;
pub mod chaos;
pub mod dns;
pub mod etcd;
pub mod kv;
pub mod lab;
pub mod outside;
pub mod podman;
pub mod scale;
pub mod serve;
pub mod spec;
pub mod sys;
pub mod wireguard;
pub mod workload;

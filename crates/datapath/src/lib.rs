//! The datapath: what moves packets.
//!
//! This crate will define the narrow `Datapath` trait the agent drives (endpoints, ipcache,
//! services, policy), its eBPF implementation (C programs under `bpf/`, loaded with aya) and an
//! in-memory fake for control-plane tests.

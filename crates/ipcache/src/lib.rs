//! The ipcache: which security identity and tunnel endpoint stand behind an IP prefix.
//!
//! Entries come from the local cluster and from every remote cluster of the mesh; this crate
//! will merge them by prefix (longest prefix wins in the datapath, source precedence here) and
//! hand the result to the datapath.

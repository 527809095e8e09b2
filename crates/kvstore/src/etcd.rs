//! (being written)
/// etcd backend (being written).
pub struct EtcdBackend;
/// etcd client configuration (being written).
pub struct EtcdConfig;
/// TLS files (being written).
pub struct TlsFiles;

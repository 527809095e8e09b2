//! Network policy: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy.
//!
//! This crate will parse the user-facing policy objects, keep a selector cache over local and
//! remote identities, and resolve per-endpoint allow and deny entries for the datapath.

//! The plugin's one error type, [`CniError`]: a CNI error code, a message naming the field,
//! variable or device at fault, and details. It is what the runtime sees, printed on stdout in
//! CNI's error form (see [`crate::result::ErrorResult`]).

use plexus_agent_api::{ApiError, ErrorKind};

use crate::conf::ConfError;
use crate::link::LinkError;
use crate::netns::NetnsError;

/// CNI error code 1: the configuration's version is not supported.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// CNI error code 4: the network configuration is invalid.
pub const INVALID_NETWORK_CONFIG: u32 = 4;
/// CNI error code 7: an environment variable is missing or invalid.
pub const INVALID_ENVIRONMENT: u32 = 7;
/// CNI error code 11: try again later (the agent is unreachable).
pub const TRY_AGAIN_LATER: u32 = 11;
/// Any other failure.
pub const OTHER: u32 = 999;

/// A failed CNI operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (code {code}){}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The CNI error code.
    pub code: u32,
    /// What failed, naming the field, variable or device.
    pub msg: String,
    /// Why, in more detail (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with a code, a message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// An agent call failed while doing `what`: unreachable is "try again later" (the message
    /// names the agent's socket), a refusal carries the agent's reason in the message, anything
    /// else is code 999.
    pub fn agent(what: &str, err: &ApiError) -> Self {
        let (code, how) = match err {
            ApiError::Unreachable { endpoint, .. } => (
                TRY_AGAIN_LATER,
                format!("the agent is unreachable at {endpoint}"),
            ),
            ApiError::Server {
                kind: ErrorKind::Unavailable,
                message,
                ..
            } => (
                TRY_AGAIN_LATER,
                format!("the agent is not ready: {message}"),
            ),
            ApiError::Server { message, .. } => (OTHER, format!("the agent refused: {message}")),
            ApiError::Decode { .. } => (OTHER, "the agent's answer is not understood".into()),
            ApiError::Runtime(_) => (OTHER, "the agent client could not start".into()),
        };
        Self::new(code, format!("{what}: {how}"), err.to_string())
    }

    /// A device operation failed while doing `what`.
    pub fn link(what: &str, err: &LinkError) -> Self {
        let code = match err {
            LinkError::Netns(NetnsError::Open { .. }) => INVALID_ENVIRONMENT,
            _ => OTHER,
        };
        Self::new(code, format!("{what}: {err}"), String::new())
    }
}

impl From<ConfError> for CniError {
    fn from(err: ConfError) -> Self {
        let code = match &err {
            ConfError::Env { .. } => INVALID_ENVIRONMENT,
            ConfError::Config { .. } => INVALID_NETWORK_CONFIG,
            ConfError::Version { .. } => INCOMPATIBLE_VERSION,
        };
        Self::new(code, err.to_string(), String::new())
    }
}

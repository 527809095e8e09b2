//! [`AgentClient`]: the real [`Agent`], the agent's API on its unix socket through
//! `plexus-agent-api`'s [`Client`], each call bounded by a timeout so a hung agent cannot hang
//! the container runtime.

use std::path::PathBuf;
use std::time::Duration;

use plexus_agent_api::{
    ApiError, Client, Endpoint, EndpointRequest, EndpointResponse, IpamRequest, IpamResponse,
    block_on,
};

use crate::plugin::Agent;

/// How long one API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's API on a unix socket.
#[derive(Debug)]
pub struct AgentClient {
    client: Client,
}

impl AgentClient {
    /// A client of the agent listening on `socket`; connects on each call.
    pub fn new(socket: PathBuf) -> Self {
        Self {
            client: Client::new(Endpoint::Unix(socket)).with_timeout(CALL_TIMEOUT),
        }
    }
}

impl Agent for AgentClient {
    fn ipam(&self, req: &IpamRequest) -> Result<IpamResponse, ApiError> {
        block_on(self.client.ipam(req))
    }

    fn put_endpoint(&self, req: &EndpointRequest) -> Result<EndpointResponse, ApiError> {
        block_on(self.client.put_endpoint(req))
    }

    fn get_endpoint(&self, container_id: &str) -> Result<EndpointResponse, ApiError> {
        block_on(self.client.get_endpoint(container_id))
    }

    fn delete_endpoint(&self, container_id: &str) -> Result<(), ApiError> {
        block_on(self.client.delete_endpoint(container_id))
    }
}

//! [`AgentClient`]: the real [`Agent`], the agent's API on its unix socket through
//! `plexus-agent-api`'s client, each call bounded by a timeout so a hung agent cannot hang the
//! container runtime.

use std::path::PathBuf;
use std::time::Duration;

use plexus_agent_api::{
    ApiError, Empty, Endpoint, EndpointRequest, EndpointResponse, IpamRequest, IpamResponse,
    Method, get_json, send_json,
};

use crate::plugin::Agent;

/// How long one API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's API on a unix socket.
#[derive(Debug)]
pub struct AgentClient {
    endpoint: Endpoint,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

impl AgentClient {
    /// A client of the agent listening on `socket`; connects on each call.
    pub fn new(socket: PathBuf) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            endpoint: Endpoint::Unix(socket),
            timeout: CALL_TIMEOUT,
            runtime,
        })
    }
}

impl Agent for AgentClient {
    fn ipam(&self, req: &IpamRequest) -> Result<IpamResponse, ApiError> {
        self.runtime.block_on(send_json(
            &self.endpoint,
            Method::POST,
            "/v1/ipam",
            req,
            self.timeout,
        ))
    }

    fn put_endpoint(&self, req: &EndpointRequest) -> Result<EndpointResponse, ApiError> {
        self.runtime.block_on(send_json(
            &self.endpoint,
            Method::PUT,
            "/v1/endpoint",
            req,
            self.timeout,
        ))
    }

    fn get_endpoint(&self, container_id: &str) -> Result<EndpointResponse, ApiError> {
        let path = format!("/v1/endpoint/{container_id}");
        self.runtime
            .block_on(get_json(&self.endpoint, &path, self.timeout))
    }

    fn delete_endpoint(&self, container_id: &str) -> Result<(), ApiError> {
        let path = format!("/v1/endpoint/{container_id}");
        self.runtime
            .block_on(send_json::<_, Empty>(
                &self.endpoint,
                Method::DELETE,
                &path,
                &Empty {},
                self.timeout,
            ))
            .map(drop)
    }
}

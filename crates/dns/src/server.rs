//! Serving a request handler ([`ClusterDns`], [`crate::ZoneDns`]) on UDP and TCP.
//!
//! [`DnsServer::bind`] binds both protocols on one address (with port 0, one free port for
//! both) and serves until [`DnsServer::shutdown`] or the end of the process. TCP connections
//! that stay silent are closed after [`TCP_TIMEOUT`].

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::server::RequestHandler;
use tokio::net::{TcpListener, UdpSocket};

use crate::handler::ClusterDns;

/// How long a TCP connection may stay silent.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// A server that could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding a socket failed.
    #[error("bind {proto} {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server's tasks failed.
    #[error("dns server: {0}")]
    Serve(String),
}

/// A running DNS server.
pub struct DnsServer<H: RequestHandler = ClusterDns> {
    server: Server<H>,
    addr: SocketAddr,
}

impl<H: RequestHandler> DnsServer<H> {
    /// Binds UDP and TCP on `addr` and starts answering with `handler`.
    pub async fn bind(addr: SocketAddr, handler: H) -> Result<Self, ServeError> {
        // With port 0 the UDP port is chosen first; TCP may find it taken, so try a few.
        let mut tries = if addr.port() == 0 { 20 } else { 1 };
        let (udp, tcp) = loop {
            tries -= 1;
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    proto: "udp",
                    addr,
                    source,
                })?;
            let bound = udp.local_addr().map_err(|source| ServeError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => break (udp, tcp),
                Err(_) if tries > 0 => continue,
                Err(source) => {
                    return Err(ServeError::Bind {
                        proto: "tcp",
                        addr: bound,
                        source,
                    });
                }
            }
        };
        let local = udp.local_addr().map_err(|source| ServeError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 64);
        tracing::info!(addr = %local, "serving DNS on udp and tcp");
        Ok(Self {
            server,
            addr: local,
        })
    }

    /// The address served (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until the server stops by itself (it does not, unless its sockets fail).
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        self.server
            .block_until_done()
            .await
            .map_err(|e| ServeError::Serve(e.to_string()))
    }

    /// Stops accepting requests and waits for those in flight.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| ServeError::Serve(e.to_string()))
    }
}

//! The Rust client: connects, handshakes, and sends requests one at a time,
//! pipelined, or as a batch — [`Client`] on tokio, [`BlockingClient`] without an
//! async runtime. The CLI, the integration tests and the Python bindings all
//! speak to the daemon through this, on the protocol crate's one codec, so they
//! cannot drift from the daemon.

mod blocking;
#[cfg(test)]
mod tests;

pub use blocking::BlockingClient;

use std::io;
use std::path::{Path, PathBuf};

use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use automation_framework_protocol::frame::{decode, encode, length_codec};
use automation_framework_protocol::{
    AdminReply, AdminRequest, AdmitReply, AdmitRequest, BreakerForce, BreakerInfo, BreakersRequest,
    BudgetReply, BudgetRequest, CheckReply, ClientFrame, Envelope, ErrorReply, ForceBreakerRequest,
    Hello, LeaseReply, LeaseRequest, Payload, Pong, QuotaInfo, QuotasRequest, ReloadReply,
    ReplyEnvelope, ReportReply, ReportRequest, Request, Response, ServerFrame, StatusReport,
    Welcome, PROTOCOL_VERSION,
};

/// A handshaken connection to the daemon.
pub struct Client {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    welcome: Welcome,
    next_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached; the message says why in the operator's
    /// terms (nothing there, no permission, a stale socket). The `io::Error` is
    /// part of the message, not a separate source, so an error chain does not
    /// print it twice.
    #[error("cannot connect to {}: {error}; {}", path.display(), connect_hint(error))]
    Connect { path: PathBuf, error: io::Error },
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The daemon sent a connection-level error and closed the connection.
    #[error("daemon closed the connection: {}: {}", code_name(.0), .0.message)]
    Closed(ErrorReply),
    /// The request was answered with an error (the connection goes on).
    #[error("{}: {}", code_name(.0), .0.message)]
    Refused(ErrorReply),
    #[error("the daemon closed the connection")]
    Disconnected,
    #[error("protocol violation by the daemon: {0}")]
    Protocol(String),
}

/// What to do when connecting to the socket failed with `error`: the usual cause
/// of each failure, not one guess for all of them (a user outside the socket's
/// group used to be asked whether the daemon was running).
pub fn connect_hint(error: &io::Error) -> String {
    let env = automation_framework_protocol::paths::SOCKET_ENV;
    match error.kind() {
        io::ErrorKind::PermissionDenied => "this user may not use the socket: it is open to its \
             group only (the systemd socket unit's SocketGroup, `automation-framework` when \
             installed from the package); add the user to that group and log in again"
            .to_owned(),
        io::ErrorKind::NotFound => format!(
            "no socket there: is automation-frameworkd running (systemctl status \
             automation-framework.socket)? Or point at its socket with --socket or ${env}"
        ),
        io::ErrorKind::ConnectionRefused => "the socket file exists but nothing listens on it: \
             the daemon is not running (start it, or remove the stale socket)"
            .to_owned(),
        _ => {
            format!("is automation-frameworkd running? Point at its socket with --socket or ${env}")
        }
    }
}

fn code_name(err: &ErrorReply) -> String {
    serde_json::to_value(err.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", err.code))
}

// === impl Client ===

impl Client {
    /// Connects to `path` and handshakes as `agent`.
    ///
    /// # Errors
    /// Connection failures, or the daemon's refusal of the handshake.
    pub async fn connect(
        path: &Path,
        agent: &str,
        client_name: &str,
    ) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|error| ClientError::Connect {
                path: path.to_owned(),
                error,
            })?;
        let mut framed = Framed::new(stream, length_codec());
        let hello = ClientFrame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: client_name.to_owned(),
            agent: agent.to_owned(),
        });
        if let Err(err) = send(&mut framed, &hello).await {
            // The daemon may have refused us before reading anything (access policy,
            // connection caps) and closed; its reason is still waiting to be read.
            if let Ok(ServerFrame::Error(reply)) = recv(&mut framed).await {
                return Err(ClientError::Closed(reply));
            }
            return Err(err);
        }
        match recv(&mut framed).await? {
            ServerFrame::Welcome(welcome) => Ok(Client {
                framed,
                welcome,
                next_id: 1,
            }),
            ServerFrame::Error(err) => Err(ClientError::Closed(err)),
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    }

    /// What the daemon said in its handshake reply.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends one request and waits for its reply. Error replies are returned as
    /// `Ok(Response::Error(..))`; use the typed helpers to get them as `Err`.
    ///
    /// # Errors
    /// Connection-level failures.
    pub async fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.send(request).await?;
        let reply = self.recv().await?;
        if reply.id != id {
            return Err(ClientError::Protocol(format!(
                "reply id {} for request {id}",
                reply.id
            )));
        }
        Ok(reply.response)
    }

    /// Sends a request without waiting (pipelining); returns the id its reply carries.
    ///
    /// # Errors
    /// Socket write errors.
    pub async fn send(&mut self, request: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        send(
            &mut self.framed,
            &ClientFrame::Request(Envelope { id, request }),
        )
        .await?;
        Ok(id)
    }

    /// Queues a request without writing it yet; returns the id its reply carries.
    /// A pipelining caller feeds a burst of requests and [`Client::flush`]es them
    /// with one write instead of one per request.
    ///
    /// # Errors
    /// Socket write errors (when the queue is large enough to be written now).
    pub async fn feed(&mut self, request: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let body = encode(&ClientFrame::Request(Envelope { id, request }))
            .map_err(|e| ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        self.framed.feed(bytes::Bytes::from(body)).await?;
        Ok(id)
    }

    /// Writes every request [`Client::feed`] queued.
    ///
    /// # Errors
    /// Socket write errors.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        SinkExt::<bytes::Bytes>::flush(&mut self.framed).await?;
        Ok(())
    }

    /// Receives the next single reply.
    ///
    /// # Errors
    /// Connection-level failures, or a frame that is not a single reply.
    pub async fn recv(&mut self) -> Result<ReplyEnvelope, ClientError> {
        match recv(&mut self.framed).await? {
            ServerFrame::Reply(reply) => Ok(reply),
            ServerFrame::Error(err) => Err(ClientError::Closed(err)),
            other => Err(ClientError::Protocol(format!(
                "expected Reply, got {other:?}"
            ))),
        }
    }

    /// Sends several requests in one frame and returns their replies in order.
    ///
    /// # Errors
    /// Connection-level failures.
    pub async fn batch(&mut self, requests: Vec<Request>) -> Result<Vec<Response>, ClientError> {
        let envelopes: Vec<Envelope> = requests
            .into_iter()
            .map(|request| {
                let id = self.next_id;
                self.next_id += 1;
                Envelope { id, request }
            })
            .collect();
        let ids: Vec<u64> = envelopes.iter().map(|e| e.id).collect();
        send(&mut self.framed, &ClientFrame::Batch(envelopes)).await?;
        match recv(&mut self.framed).await? {
            ServerFrame::Batch(replies) => {
                let got: Vec<u64> = replies.iter().map(|r| r.id).collect();
                if got != ids {
                    return Err(ClientError::Protocol(format!(
                        "batch reply ids {got:?} for requests {ids:?}"
                    )));
                }
                Ok(replies.into_iter().map(|r| r.response).collect())
            }
            ServerFrame::Error(err) => Err(ClientError::Closed(err)),
            other => Err(ClientError::Protocol(format!(
                "expected Batch, got {other:?}"
            ))),
        }
    }

    /// # Errors
    /// Connection failures or an error reply.
    pub async fn ping(&mut self) -> Result<Pong, ClientError> {
        match self.call(Request::Ping).await? {
            Response::Pong(pong) => Ok(pong),
            other => unexpected(other),
        }
    }

    /// # Errors
    /// Connection failures or an error reply.
    pub async fn status(&mut self) -> Result<StatusReport, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => unexpected(other),
        }
    }

    /// # Errors
    /// Connection failures or an error reply (a denial is `Ok` with `allowed: false`).
    pub async fn admit(&mut self, request: AdmitRequest) -> Result<AdmitReply, ClientError> {
        match self.call(Request::Admit(request)).await? {
            Response::Admit(reply) => Ok(reply),
            other => unexpected(other),
        }
    }

    /// # Errors
    /// Connection failures or an error reply.
    pub async fn report(&mut self, request: ReportRequest) -> Result<ReportReply, ClientError> {
        match self.call(Request::Report(request)).await? {
            Response::Report(reply) => Ok(reply),
            other => unexpected(other),
        }
    }

    /// # Errors
    /// Connection failures or an error reply.
    pub async fn breakers(
        &mut self,
        service: Option<String>,
    ) -> Result<Vec<BreakerInfo>, ClientError> {
        match self
            .call(Request::Breakers(BreakersRequest { service }))
            .await?
        {
            Response::Breakers(reply) => Ok(reply.breakers),
            other => unexpected(other),
        }
    }
}

// === impl Client (budgets, quotas, admin) ===

impl Client {
    /// # Errors
    /// Connection failures or an error reply.
    pub async fn budget(&mut self, agent: Option<String>) -> Result<BudgetReply, ClientError> {
        match self.call(Request::Budget(BudgetRequest { agent })).await? {
            Response::Budget(reply) => Ok(reply),
            other => unexpected(other),
        }
    }

    /// # Errors
    /// Connection failures or an error reply.
    pub async fn quotas(&mut self, quota: Option<String>) -> Result<Vec<QuotaInfo>, ClientError> {
        match self.call(Request::Quotas(QuotasRequest { quota })).await? {
            Response::Quotas(reply) => Ok(reply.quotas),
            other => unexpected(other),
        }
    }

    /// An admin operation (the daemon refuses it unless the peer is an admin).
    ///
    /// # Errors
    /// Connection failures or an error reply.
    pub async fn admin(&mut self, request: AdminRequest) -> Result<AdminReply, ClientError> {
        match self.call(Request::Admin(request)).await? {
            Response::Admin(reply) => Ok(reply),
            other => unexpected(other),
        }
    }

    /// Forces a service's breaker open, closed or disabled, or (`Auto`) hands it
    /// back to its config. Returns the breaker afterwards.
    ///
    /// # Errors
    /// Connection failures or an error reply (`not_permitted` for a non-admin).
    pub async fn force_breaker(
        &mut self,
        service: String,
        force: BreakerForce,
    ) -> Result<BreakerInfo, ClientError> {
        match self
            .call(Request::ForceBreaker(ForceBreakerRequest {
                service,
                force,
            }))
            .await?
        {
            Response::ForceBreaker(info) => Ok(info),
            other => unexpected(other),
        }
    }

    /// Asks the daemon to re-read its configuration file (admin only).
    ///
    /// # Errors
    /// Connection failures or an error reply (`invalid_argument` with the reason
    /// when the file is refused; the old configuration then stays in force).
    pub async fn reload(&mut self) -> Result<ReloadReply, ClientError> {
        match self.call(Request::Reload).await? {
            Response::Reload(reply) => Ok(reply),
            other => unexpected(other),
        }
    }

    /// Scans `payload` with the daemon's content rules; changes nothing.
    ///
    /// # Errors
    /// Connection failures or an error reply (too large, unknown language,
    /// content checks disabled).
    pub async fn check(&mut self, payload: Payload) -> Result<CheckReply, ClientError> {
        match self.call(Request::Check(payload)).await? {
            Response::Check(reply) => Ok(reply),
            other => unexpected(other),
        }
    }

    /// Which service of a route (or a chain) to call now; takes nothing.
    ///
    /// # Errors
    /// Connection failures or an error reply (unknown route or service).
    pub async fn route(
        &mut self,
        request: automation_framework_protocol::RouteRequest,
    ) -> Result<automation_framework_protocol::RouteReply, ClientError> {
        match self.call(Request::Route(request)).await? {
            Response::Route(reply) => Ok(reply),
            other => unexpected(other),
        }
    }

    /// Acquires, renews or releases a named lease for this connection. A lease
    /// another connection holds is not an error: `granted` is false and
    /// `holder` names it.
    ///
    /// # Errors
    /// Connection failures or an error reply (a TTL above `leases.max_ttl`,
    /// too many leases held).
    pub async fn lease(&mut self, request: LeaseRequest) -> Result<LeaseReply, ClientError> {
        match self.call(Request::Lease(request)).await? {
            Response::Lease(reply) => Ok(reply),
            other => unexpected(other),
        }
    }
}

fn unexpected<T>(response: Response) -> Result<T, ClientError> {
    match response {
        Response::Error(err) => Err(ClientError::Refused(err)),
        other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
    }
}

async fn send(
    framed: &mut Framed<UnixStream, LengthDelimitedCodec>,
    frame: &ClientFrame,
) -> Result<(), ClientError> {
    let body = encode(frame)
        .map_err(|e| ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    framed.send(bytes::Bytes::from(body)).await?;
    Ok(())
}

async fn recv(
    framed: &mut Framed<UnixStream, LengthDelimitedCodec>,
) -> Result<ServerFrame, ClientError> {
    match framed.next().await {
        None => Err(ClientError::Disconnected),
        Some(Err(err)) => Err(ClientError::Io(err)),
        Some(Ok(body)) => decode(&body).map_err(|e| ClientError::Protocol(e.to_string())),
    }
}

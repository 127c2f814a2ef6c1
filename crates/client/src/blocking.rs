//! The blocking client: the same connection and the same methods as [`Client`],
//! for callers without an async runtime (scripts, bindings that hold the GIL,
//! plain threads). Each `BlockingClient` owns a current-thread runtime and
//! drives its one connection on the calling thread; share it between threads
//! behind a `Mutex`, or open one per thread.

use std::path::Path;

use automation_framework_protocol::{
    AdminReply, AdminRequest, AdmitReply, AdmitRequest, BreakerForce, BreakerInfo, BudgetReply,
    LeaseReply, LeaseRequest, Pong, QuotaInfo, ReloadReply, ReplyEnvelope, ReportReply,
    ReportRequest, Request, Response, StatusReport, Welcome,
};

use crate::{Client, ClientError};

/// A handshaken connection to the daemon, used without `async`.
pub struct BlockingClient {
    runtime: tokio::runtime::Runtime,
    inner: Client,
}

/// Generates the blocking twin of each of `Client`'s request methods.
macro_rules! blocking {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {
        $(
            $(#[$doc])*
            ///
            /// # Errors
            /// As for the async [`Client`] method of the same name.
            pub fn $name(&mut self, $($arg: $ty),*) -> Result<$out, ClientError> {
                self.runtime.block_on(self.inner.$name($($arg),*))
            }
        )*
    };
}

// === impl BlockingClient ===

impl BlockingClient {
    /// Connects to the socket at `path` and handshakes as `agent`; `client` names
    /// the program in the daemon's logs.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when nothing listens at `path`; the daemon's
    /// refusal of the handshake.
    pub fn connect(path: &Path, agent: &str, client: &str) -> Result<BlockingClient, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let inner = runtime.block_on(Client::connect(path, agent, client))?;
        Ok(BlockingClient { runtime, inner })
    }

    /// What the daemon said in its `Welcome`.
    pub fn welcome(&self) -> &Welcome {
        self.inner.welcome()
    }

    blocking! {
        /// Sends one request and waits for its reply.
        fn call(request: Request) -> Response;
        /// Sends a request without waiting (pipelining); returns its id.
        fn send(request: Request) -> u64;
        /// The next reply, in the order the requests were sent.
        fn recv() -> ReplyEnvelope;
        /// Several requests in one frame, answered in order.
        fn batch(requests: Vec<Request>) -> Vec<Response>;
        fn ping() -> Pong;
        fn status() -> StatusReport;
        fn admit(request: AdmitRequest) -> AdmitReply;
        fn report(request: ReportRequest) -> ReportReply;
        fn breakers(service: Option<String>) -> Vec<BreakerInfo>;
        fn budget(agent: Option<String>) -> BudgetReply;
        fn quotas(quota: Option<String>) -> Vec<QuotaInfo>;
        fn admin(request: AdminRequest) -> AdminReply;
        fn force_breaker(service: String, force: BreakerForce) -> BreakerInfo;
        fn reload() -> ReloadReply;
        fn lease(request: LeaseRequest) -> LeaseReply;
    }
}

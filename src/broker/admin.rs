//! Administration from threads that are not shards (the `/admin` endpoints of the metrics
//! listener): list the connected clients, disconnect one, delete a stored session.
//!
//! Each shard has a request channel of its own, which its tick loop drains (so an answer takes
//! up to one tick, 200 ms); a request carries the channel its reply goes back on. Every request
//! goes to every shard and the replies are gathered within [`REPLY_TIMEOUT`]: a listing needs
//! every shard anyway, and for a client id fanning out is the one way that needs no second
//! round trip (the home shard's registry names the owner shard, but the session may have moved
//! on by the time that shard is asked). What each shard does is a sans-I/O step of its state
//! machine, [`crate::broker::Shard::admin`], within the client-id ownership protocol.
//!
//! A client id moving between shards while the request is out may be found on no shard; some
//! shard then reports it in transit (a claim, a stub, an unsettled registration), and the
//! request is asked once more after [`RETRY_AFTER`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use sha2::{Digest, Sha256};

use super::shard::Global;
pub use super::shard::{AdminReply, AdminRequest, ClientInfo, SessionOutcome, SessionReport};

/// How long a request waits for every shard's answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before asking again about a client id that was between shards.
pub const RETRY_AFTER: Duration = Duration::from_millis(250);
/// Requests that may wait for one shard; beyond it the shard counts as not answering.
const QUEUE: usize = 16;

/// A request on its way to a shard, with where the answer goes.
#[derive(Debug)]
pub(super) struct Envelope {
    pub(super) request: AdminRequest,
    pub(super) reply: Sender<(usize, AdminReply)>,
}

/// One shard's end: the requests it has to answer.
pub(super) type Requests = Receiver<Envelope>;

/// Why an administrative request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The broker is stopping, or a shard failed.
    #[error("the broker is stopping")]
    Unavailable,
    /// A shard did not answer in time (or has too many requests waiting).
    #[error("shard {0} did not answer within {REPLY_TIMEOUT:?}")]
    Timeout(usize),
}

/// The connected clients, all shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientList {
    /// At most the asked number, sorted by client id.
    pub clients: Vec<ClientInfo>,
    /// How many clients are connected.
    pub total: usize,
}

/// The administrative interface to a running broker, for any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    shards: Vec<Sender<Envelope>>,
    /// SHA-256 of the configured `admin_token` (`None`: administration is disabled). Replaced
    /// on reload.
    token: Arc<Mutex<Option<[u8; 32]>>>,
    global: Arc<Global>,
}

/// One request channel per shard: the senders for [`Admin`], the receivers for the shards.
pub(super) fn channels(shards: usize) -> (Vec<Sender<Envelope>>, Vec<Requests>) {
    (0..shards)
        .map(|_| crossbeam_channel::bounded(QUEUE))
        .unzip()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Admin {
    pub(super) fn new(
        shards: Vec<Sender<Envelope>>,
        token: Option<&str>,
        global: Arc<Global>,
    ) -> Admin {
        Admin {
            shards,
            token: Arc::new(Mutex::new(token.map(digest))),
            global,
        }
    }

    /// Replaces the token (a reload; `None` disables administration). Returns whether it
    /// changed.
    pub(super) fn replace_token(&self, token: Option<&str>) -> bool {
        let new = token.map(digest);
        let mut current = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *current, new);
        old != new
    }

    /// Whether an `admin_token` is configured.
    pub fn enabled(&self) -> bool {
        self.token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Whether `presented` is the configured token. The comparison takes the same time
    /// wherever the two differ, and whatever their lengths (digests are compared). Always
    /// false when administration is disabled.
    pub fn authorized(&self, presented: &str) -> bool {
        let expected = *self.token.lock().unwrap_or_else(PoisonError::into_inner);
        expected.is_some_and(|expected| crate::auth::password::ct_eq(&digest(presented), &expected))
    }

    /// The connected clients: at most `limit` of them (sorted by client id; which ones, when
    /// there are more, is up to the shards), and how many there are.
    pub fn clients(&self, limit: usize) -> Result<ClientList, AdminError> {
        let replies = self.ask_all(&AdminRequest::Clients { limit })?;
        let mut clients = Vec::new();
        let mut total = 0;
        for reply in replies {
            if let AdminReply::Clients {
                clients: some,
                total: count,
            } = reply
            {
                clients.extend(some);
                total += count;
            }
        }
        clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        clients.truncate(limit);
        Ok(ClientList { clients, total })
    }

    /// Disconnects `client_id` (see [`AdminRequest::Disconnect`]).
    pub fn disconnect(&self, client_id: &str) -> Result<SessionOutcome, AdminError> {
        self.session_request(&AdminRequest::Disconnect {
            client_id: client_id.to_string(),
        })
    }

    /// Deletes the session of `client_id` (see [`AdminRequest::DeleteSession`]).
    pub fn delete_session(&self, client_id: &str) -> Result<SessionOutcome, AdminError> {
        self.session_request(&AdminRequest::DeleteSession {
            client_id: client_id.to_string(),
        })
    }

    /// Asks every shard about one client id; once more if it was between shards.
    fn session_request(&self, request: &AdminRequest) -> Result<SessionOutcome, AdminError> {
        let mut outcome = SessionOutcome::Absent;
        for attempt in 0..2 {
            if attempt > 0 {
                std::thread::sleep(RETRY_AFTER);
            }
            outcome = combine(self.ask_all(request)?);
            if outcome != SessionOutcome::InTransit {
                break;
            }
        }
        Ok(outcome)
    }

    /// Sends `request` to every shard and gathers every answer, by shard.
    fn ask_all(&self, request: &AdminRequest) -> Result<Vec<AdminReply>, AdminError> {
        if self
            .global
            .shutdown
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(AdminError::Unavailable);
        }
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(self.shards.len());
        for (shard, requests) in self.shards.iter().enumerate() {
            let envelope = Envelope {
                request: request.clone(),
                reply: reply_tx.clone(),
            };
            match requests.try_send(envelope) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(AdminError::Timeout(shard)),
                Err(TrySendError::Disconnected(_)) => return Err(AdminError::Unavailable),
            }
        }
        drop(reply_tx);
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut replies: Vec<Option<AdminReply>> = vec![None; self.shards.len()];
        let mut missing = self.shards.len();
        while missing > 0 {
            match reply_rx.recv_deadline(deadline) {
                Ok((shard, reply)) => {
                    if let Some(slot) = replies.get_mut(shard).filter(|s| s.is_none()) {
                        *slot = Some(reply);
                        missing -= 1;
                    }
                }
                // Every shard dropped its sender without answering: they are gone.
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(AdminError::Unavailable)
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let shard = replies.iter().position(Option::is_none).unwrap_or(0);
                    return Err(AdminError::Timeout(shard));
                }
            }
        }
        Ok(replies.into_iter().flatten().collect())
    }
}

/// One outcome from every shard's: done somewhere wins (the lowest shard's report, should two
/// have acted: a client that moved while the request was out); then in transit (ask again);
/// then a session without a connection; otherwise absent.
fn combine(replies: Vec<AdminReply>) -> SessionOutcome {
    let mut outcome = SessionOutcome::Absent;
    for reply in replies {
        let AdminReply::Session(this) = reply else {
            continue;
        };
        let rank = |o: &SessionOutcome| match o {
            SessionOutcome::Done(_) => 3,
            SessionOutcome::InTransit => 2,
            SessionOutcome::NotConnected => 1,
            SessionOutcome::Absent => 0,
        };
        if rank(&this) > rank(&outcome) {
            outcome = this;
        }
    }
    outcome
}

/// Answers every request waiting for `shard` (called by its tick loop).
pub(super) fn serve(
    requests: &Requests,
    shard: &mut super::Shard,
    peer: &mut dyn FnMut(super::handles::ConnId) -> Option<std::net::SocketAddr>,
) {
    while let Ok(envelope) = requests.try_recv() {
        let reply = shard.admin(&envelope.request, Instant::now(), peer);
        // The asking thread may have given up (timeout): nothing to do then.
        let _ = envelope.reply.send((shard.shard_id(), reply));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(token: Option<&str>) -> Admin {
        Admin::new(Vec::new(), token, Arc::new(Global::default()))
    }

    #[test]
    fn tokens_are_checked_and_replaced() {
        let disabled = admin(None);
        assert!(!disabled.enabled());
        assert!(!disabled.authorized(""));
        let admin = admin(Some("0123456789abcdef"));
        assert!(admin.enabled());
        assert!(admin.authorized("0123456789abcdef"));
        assert!(!admin.authorized("0123456789abcdeF"));
        assert!(!admin.authorized("0123456789abcde"));
        assert!(!admin.authorized(""));
        let clone = admin.clone();
        assert!(admin.replace_token(Some("another-token-0000")));
        assert!(!admin.replace_token(Some("another-token-0000")));
        assert!(clone.authorized("another-token-0000"));
        assert!(!clone.authorized("0123456789abcdef"));
        assert!(admin.replace_token(None));
        assert!(!clone.enabled());
    }

    #[test]
    fn outcomes_combine() {
        use SessionOutcome::*;
        let session = |o: SessionOutcome| AdminReply::Session(o);
        assert_eq!(combine(vec![session(Absent), session(Absent)]), Absent);
        assert_eq!(
            combine(vec![session(NotConnected), session(InTransit)]),
            InTransit
        );
        assert_eq!(
            combine(vec![session(Absent), session(NotConnected)]),
            NotConnected
        );
        let report = SessionReport {
            shard: 1,
            protocol: crate::codec::ProtocolVersion::V5,
            was_connected: true,
            will: false,
            subscriptions: 0,
            queued: 0,
            inflight: 0,
        };
        assert_eq!(
            combine(vec![session(InTransit), session(Done(report.clone()))]),
            Done(report)
        );
    }

    #[test]
    fn unanswered_requests_time_out_and_gone_shards_are_unavailable() {
        let (senders, receivers) = channels(2);
        let admin = Admin::new(
            senders,
            Some("0123456789abcdef"),
            Arc::new(Global::default()),
        );
        // Shard 0 answers, shard 1 never does.
        let answering = std::thread::spawn({
            let requests = receivers[0].clone();
            move || {
                let envelope = requests.recv().unwrap();
                let reply = AdminReply::Clients {
                    clients: Vec::new(),
                    total: 0,
                };
                envelope.reply.send((0, reply)).unwrap();
            }
        });
        let started = Instant::now();
        assert_eq!(admin.clients(10), Err(AdminError::Timeout(1)));
        assert!(started.elapsed() >= REPLY_TIMEOUT);
        answering.join().unwrap();
        drop(receivers);
        assert_eq!(admin.clients(10), Err(AdminError::Unavailable));
    }
}

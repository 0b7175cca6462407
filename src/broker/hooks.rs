//! The narrow interfaces through which features attach to a shard, each with a default that
//! does what the broker does without the feature:
//!
//! - [`Admission`]: decides on a CONNECT (credentials, enhanced authentication, client-id
//!   rules) and names the CONNACK reason code when it refuses. Default: enhanced
//!   authentication through [`AuthMethods`] (unknown methods get 0x8C), everyone else admitted.
//! - [`Authorization`]: may this client publish to a topic, subscribe to a filter, receive a
//!   message? Default: yes (the broker's own rule, `$SYS` is read-only, stays in the shard).
//! - [`Journal`]: every durable state change as a plain-data [`JournalRecord`]; the journal
//!   answers whether the change is already durable or will be at a sequence number, and the
//!   shard holds the acknowledgement that depends on it until [`Shard::on_durable`] says so.
//!   Default: nothing is persisted, everything is "durable" at once.
//! - Counters: [`ShardStats`], a plain struct the shard bumps and the runtime snapshots.
//!
//! Hooks run on the shard thread, inside the state machine: they must not block.
//!
//! [`Shard::on_durable`]: super::Shard::on_durable
//! [`ShardStats`]: super::ShardStats

use std::fmt;
use std::sync::Arc;

use crate::acl::Acl;
pub use crate::acl::{ClientAcl, SubscribeCheck};
use crate::auth::password::{PasswordFile, Verdict};
use crate::auth::{AuthMethods, AuthStep};
use crate::codec::{Connect, LastWill, MqttStr, QoS, ReasonCode, SubscriptionOptions};
use crate::config::Config;
use crate::session::Message;

/// Who a check is about.
#[derive(Debug, Clone, Copy)]
pub struct ClientRef<'a> {
    /// The client identifier.
    pub client_id: &'a str,
    /// The user name the client connected with, if any.
    pub username: Option<&'a str>,
    /// What [`Authorization::prepare`] worked out for this client when its session attached
    /// to its connection (`None`: nothing, e.g. a will published after the session ended).
    pub prepared: Option<&'a ClientAcl>,
}

/// What the listener a CONNECT came through says about admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerAdmission {
    /// The listener's `allow_anonymous`: overrides the broker-wide rule when set.
    pub allow_anonymous: Option<bool>,
}

/// Decides whether a CONNECT may proceed.
pub trait Admission: fmt::Debug {
    /// `Ok(())` to go on with the connection; `Err(reason)` to refuse it with that CONNACK
    /// reason code (3.x clients get the closest return code).
    fn admit(&self, connect: &Connect) -> Result<(), ReasonCode>;

    /// [`Admission::admit`] for a CONNECT that came through a listener with settings of its
    /// own. The shard calls this one; the default ignores the listener.
    fn admit_on(&self, connect: &Connect, listener: ListenerAdmission) -> Result<(), ReasonCode> {
        let _ = listener;
        self.admit(connect)
    }
}

/// Today's admission: MQTT 5.0 enhanced authentication through the registered methods.
#[derive(Debug, Default)]
pub struct DefaultAdmission {
    /// Enhanced-authentication methods (none ship yet).
    pub methods: AuthMethods,
}

impl Admission for DefaultAdmission {
    fn admit(&self, connect: &Connect) -> Result<(), ReasonCode> {
        let Some(method) = &connect.properties.authentication_method else {
            return Ok(());
        };
        // Unknown methods get 0x8C (MQTT 5.0 §4.12). A registered method decides in one step;
        // multi-step AUTH exchanges are not wired up yet.
        let Some(auth) = self.methods.find(method) else {
            return Err(ReasonCode::BadAuthenticationMethod);
        };
        let mut state = None;
        match auth.start(
            &connect.client_id,
            connect.properties.authentication_data.as_ref(),
            &mut state,
        ) {
            AuthStep::Success => Ok(()),
            AuthStep::Fail(reason) => Err(reason),
            AuthStep::Continue(_) => Err(ReasonCode::ImplementationSpecificError),
        }
    }
}

/// Admission from the configuration: enhanced authentication as in [`DefaultAdmission`], then
/// the password file and the anonymous-client rule (Mosquitto 2.0's semantics):
///
/// - a CONNECT without a user name is admitted only when anonymous clients are allowed, else
///   refused with 0x87 Not authorized (3.x: 5). The listener's own `allow_anonymous` decides
///   when set ([`ListenerAdmission`]); otherwise the broker-wide rule
///   ([`Config::anonymous_allowed`]);
/// - with a password file, a user name must be in it with the right password, else 0x86 Bad
///   user name or password (3.x: 4), for an unknown user and a wrong password alike (and for a
///   user name without a password);
/// - without a password file, a user name is taken as given.
#[derive(Debug, Default)]
pub struct ConfigAdmission {
    /// Enhanced authentication (unknown methods get 0x8C).
    pub enhanced: DefaultAdmission,
    /// The password file, shared read-only by every shard.
    pub passwords: Option<Arc<PasswordFile>>,
    /// Whether clients without a user name are admitted (unless their listener says otherwise).
    pub allow_anonymous: bool,
}

impl ConfigAdmission {
    /// The admission `config` asks for.
    pub fn from_config(config: &Config) -> ConfigAdmission {
        ConfigAdmission {
            enhanced: DefaultAdmission::default(),
            passwords: config
                .auth_files
                .passwords
                .as_ref()
                .map(|file| Arc::clone(&file.data)),
            allow_anonymous: config.anonymous_allowed(),
        }
    }
}

impl Admission for ConfigAdmission {
    fn admit(&self, connect: &Connect) -> Result<(), ReasonCode> {
        self.admit_on(connect, ListenerAdmission::default())
    }

    fn admit_on(&self, connect: &Connect, listener: ListenerAdmission) -> Result<(), ReasonCode> {
        if connect.properties.authentication_method.is_some() {
            // A registered method authenticates the client on its own.
            return self.enhanced.admit(connect);
        }
        let Some(username) = &connect.username else {
            return if listener.allow_anonymous.unwrap_or(self.allow_anonymous) {
                Ok(())
            } else {
                Err(ReasonCode::NotAuthorized)
            };
        };
        let Some(passwords) = &self.passwords else {
            return Ok(());
        };
        let Some(password) = &connect.password else {
            return Err(ReasonCode::BadUserNameOrPassword);
        };
        match passwords.verify(username, password) {
            Verdict::Ok => Ok(()),
            Verdict::WrongPassword | Verdict::UnknownUser => Err(ReasonCode::BadUserNameOrPassword),
        }
    }
}

/// Decides what a client may do with topics.
pub trait Authorization: fmt::Debug {
    /// May `client` publish to `topic`?
    fn may_publish(&self, client: ClientRef<'_>, topic: &str) -> bool {
        let _ = (client, topic);
        true
    }

    /// May `client` subscribe to `filter` (a `$share/group/` prefix already stripped)?
    fn may_subscribe(&self, client: ClientRef<'_>, filter: &str) -> bool {
        let _ = (client, filter);
        true
    }

    /// The subscribe-time decision, which also says whether deliveries through the filter need
    /// [`Authorization::may_receive`]: the shard calls `may_receive` only for sessions holding
    /// a subscription classified [`SubscribeCheck::AllowedCheckEachMessage`]. The default
    /// derives it from [`Authorization::may_subscribe`] and
    /// [`Authorization::checks_deliveries`].
    fn subscribe_check(&self, client: ClientRef<'_>, filter: &str) -> SubscribeCheck {
        if !self.may_subscribe(client, filter) {
            SubscribeCheck::Denied
        } else if self.checks_deliveries() {
            SubscribeCheck::AllowedCheckEachMessage
        } else {
            SubscribeCheck::Allowed
        }
    }

    /// Whether [`Authorization::may_receive`] can ever say no. When false (the default) the
    /// shard skips the per-delivery call entirely.
    fn checks_deliveries(&self) -> bool {
        false
    }

    /// May `client` receive a message published to `topic` (retained ones included)?
    fn may_receive(&self, client: ClientRef<'_>, topic: &str) -> bool {
        let _ = (client, topic);
        true
    }

    /// The per-client part of the publish and delivery checks, worked out once when a session
    /// attaches to its connection and again when this hook is replaced (a reload). The shard
    /// keeps it with the session and passes it back as [`ClientRef::prepared`]; a check must
    /// give the same answer with or without it. Default: nothing to prepare.
    fn prepare(&self, client: ClientRef<'_>) -> Option<ClientAcl> {
        let _ = client;
        None
    }
}

/// Everyone may do everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Authorization for AllowAll {}

/// Authorization from a Mosquitto ACL file ([`Acl`]), shared read-only by every shard.
#[derive(Debug, Clone)]
pub struct AclAuthorization {
    /// The rules.
    pub acl: Arc<Acl>,
}

impl Authorization for AclAuthorization {
    fn may_publish(&self, client: ClientRef<'_>, topic: &str) -> bool {
        match client.prepared {
            Some(prepared) => {
                self.acl
                    .may_publish_with(prepared, client.username, client.client_id, topic)
            }
            None => self
                .acl
                .may_publish(client.username, client.client_id, topic),
        }
    }

    fn may_subscribe(&self, client: ClientRef<'_>, filter: &str) -> bool {
        self.subscribe_check(client, filter) != SubscribeCheck::Denied
    }

    fn subscribe_check(&self, client: ClientRef<'_>, filter: &str) -> SubscribeCheck {
        self.acl
            .may_subscribe(client.username, client.client_id, filter)
    }

    fn checks_deliveries(&self) -> bool {
        true
    }

    fn may_receive(&self, client: ClientRef<'_>, topic: &str) -> bool {
        match client.prepared {
            Some(prepared) => {
                self.acl
                    .may_receive_with(prepared, client.username, client.client_id, topic)
            }
            None => self
                .acl
                .may_receive(client.username, client.client_id, topic),
        }
    }

    fn prepare(&self, client: ClientRef<'_>) -> Option<ClientAcl> {
        Some(self.acl.client_acl(client.username, client.client_id))
    }
}

/// The admission and authorization hooks `config` asks for (password file, anonymous rule,
/// ACL file), sharing its loaded files.
pub fn auth_hooks(config: &Config) -> (Box<dyn Admission>, Box<dyn Authorization>) {
    let admission = Box::new(ConfigAdmission::from_config(config));
    let authorization: Box<dyn Authorization> = match &config.auth_files.acl {
        Some(acl) => Box::new(AclAuthorization {
            acl: Arc::clone(&acl.data),
        }),
        None => Box::new(AllowAll),
    };
    (admission, authorization)
}

/// Identifies a message body in a shard's journal (see [`Journal::message_id`]).
pub type MessageId = u64;

/// A durable state change, as plain data. Session records name the session by client id and
/// the generation of the claim that owns it (issued in claim order by the client id's home
/// shard, newer across boots): a new owner writes the whole session again under its
/// generation, and recovery keeps only the newest generation's records.
#[derive(Debug, Clone, Copy)]
pub enum JournalRecord<'a> {
    /// A session that outlives its connection was created or taken over, and its client is
    /// connected. Later records of `generation` build its state from empty.
    SessionStarted {
        /// Client identifier.
        client_id: &'a str,
        /// The owning claim's generation.
        generation: u64,
        /// The owner's user name.
        username: Option<&'a str>,
        /// Protocol level (3, 4 or 5).
        protocol: u8,
        /// Seconds the session lives after its connection ends (`None`: forever).
        expiry: Option<u32>,
    },
    /// The session's connection ended; the session lives on for `expiry` from now.
    SessionDisconnected {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// The session expiry in force from now (`None`: forever).
        expiry: Option<u32>,
    },
    /// The session ended (expired, clean start, discarded): nothing of it remains.
    SessionEnded {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
    },
    /// The session's will (published when its connection ends abnormally, after its delay).
    WillSet {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// The will (its delay is in its properties).
        will: &'a LastWill,
    },
    /// The will is gone (normal disconnect, or published).
    WillCleared {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
    },
    /// Deliveries of a QoS 2 PUBLISH from another shard reached these durable sessions: a
    /// resend after a crash is not delivered to them again until `OriginCleared`.
    OriginReceived {
        /// The publisher's client id.
        publisher: &'a str,
        /// Its packet id.
        packet_id: u16,
        /// CRC-32C of topic and payload.
        digest: u32,
        /// The subscribers' client ids.
        clients: &'a [MqttStr],
    },
    /// The publisher's shard recorded the packet id.
    OriginCleared {
        /// The publisher's client id.
        publisher: &'a str,
        /// Its packet id.
        packet_id: u16,
    },
    /// The session's image (written by each new owner) is complete.
    ImageComplete {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
    },
    /// A persistent session subscribed (or replaced a subscription).
    Subscribed {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// The filter (with any `$share/group/` prefix).
        filter: &'a str,
        /// Its options.
        options: SubscriptionOptions,
        /// Its subscription identifier (0: none).
        subscription_id: u32,
    },
    /// A persistent session unsubscribed.
    Unsubscribed {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// The filter.
        filter: &'a str,
    },
    /// A QoS 1/2 message was queued for the session (`message` from [`Journal::message_id`]).
    Enqueued {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// The message body.
        message: MessageId,
        /// QoS of the delivery.
        qos: QoS,
        /// Retain flag of the delivery.
        retain: bool,
        /// Subscription identifiers of the delivery.
        subscription_ids: &'a [u32],
    },
    /// A message was sent with `packet_id` (taken off the queue if it was queued: then
    /// `message` is the id it was queued with) and waits for its PUBACK / PUBREC.
    InFlight {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// The message body.
        message: MessageId,
        /// Packet identifier.
        packet_id: u16,
        /// QoS of the delivery.
        qos: QoS,
        /// Retain flag of the delivery.
        retain: bool,
        /// Subscription identifiers of the delivery.
        subscription_ids: &'a [u32],
    },
    /// The in-flight message `packet_id` is resent with DUP set from now on.
    DupSet {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// Packet identifier.
        packet_id: u16,
    },
    /// Outgoing QoS 2: PUBREC received, PUBREL due.
    PubRecReceived {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// Packet identifier.
        packet_id: u16,
    },
    /// The in-flight message `packet_id` is done (PUBACK, PUBCOMP, dropped).
    Acked {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// Packet identifier.
        packet_id: u16,
    },
    /// A queued message was dropped before it was sent (expired, too large).
    Dequeued {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// The message body.
        message: MessageId,
    },
    /// Inbound QoS 2: the PUBLISH `packet_id` was accepted (its PUBREC depends on this).
    InboundReceived {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// Packet identifier.
        packet_id: u16,
    },
    /// Inbound QoS 2: PUBREL received (its PUBCOMP depends on this).
    InboundReleased {
        /// Client identifier.
        client_id: &'a str,
        /// Generation.
        generation: u64,
        /// Packet identifier.
        packet_id: u16,
    },
    /// This shard, as the topic's owner, set its retained message.
    RetainedSet {
        /// The topic.
        topic: &'a str,
        /// Version (issued by the owner shard, newer across boots).
        version: u64,
        /// The message body.
        message: MessageId,
    },
    /// This shard, as the topic's owner, cleared its retained message.
    RetainedCleared {
        /// The topic.
        topic: &'a str,
        /// Version.
        version: u64,
    },
}

impl JournalRecord<'_> {
    /// The record's kind, for logs and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            JournalRecord::SessionStarted { .. } => "session-started",
            JournalRecord::SessionDisconnected { .. } => "session-disconnected",
            JournalRecord::SessionEnded { .. } => "session-ended",
            JournalRecord::WillSet { .. } => "will-set",
            JournalRecord::WillCleared { .. } => "will-cleared",
            JournalRecord::ImageComplete { .. } => "image-complete",
            JournalRecord::OriginReceived { .. } => "origin-received",
            JournalRecord::OriginCleared { .. } => "origin-cleared",
            JournalRecord::Subscribed { .. } => "subscribed",
            JournalRecord::Unsubscribed { .. } => "unsubscribed",
            JournalRecord::Enqueued { .. } => "enqueued",
            JournalRecord::InFlight { .. } => "in-flight",
            JournalRecord::DupSet { .. } => "dup-set",
            JournalRecord::PubRecReceived { .. } => "pubrec-received",
            JournalRecord::Acked { .. } => "acked",
            JournalRecord::Dequeued { .. } => "dequeued",
            JournalRecord::InboundReceived { .. } => "inbound-received",
            JournalRecord::InboundReleased { .. } => "inbound-released",
            JournalRecord::RetainedSet { .. } => "retained-set",
            JournalRecord::RetainedCleared { .. } => "retained-cleared",
        }
    }
}

/// When a journal record is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Now (or never needed): acknowledge at once.
    Now,
    /// Once the journal reports sequence number `0` durable ([`super::Shard::on_durable`]).
    At(u64),
}

/// Records durable state changes. The shard calls it only for state that is persisted
/// (sessions that outlive their connection, retained messages) and only when
/// [`Journal::enabled`] says so.
pub trait Journal: fmt::Debug {
    /// Whether anything is persisted (false: the shard builds no records at all).
    fn enabled(&self) -> bool {
        false
    }
    /// Records `record`; says when it is durable.
    fn append(&mut self, record: &JournalRecord<'_>) -> Durability;
    /// The id of `message`'s body in this journal, writing the body first if it is not the
    /// body written last (a message fanned out to many sessions of the shard is written once).
    fn message_id(&mut self, _message: &Arc<Message>) -> MessageId {
        0
    }
    /// When everything appended so far is durable.
    fn barrier(&self) -> Durability {
        Durability::Now
    }
    /// The runtime's side: everything appended since the last call, to be written (the
    /// journal answers `on_durable` with the batch's last sequence number once it is).
    fn take_batch(&mut self) -> Option<JournalBatch> {
        None
    }
    /// The runtime's side: a batch from [`Journal::take_batch`] that has been written, handed
    /// back so that its buffers can hold a later batch (no allocation, no regrowth per batch).
    fn recycle(&mut self, batch: JournalBatch) {
        drop(batch);
    }
    /// Whether a snapshot of the shard's state is due (the current log segment is full):
    /// the shard then writes its whole state with [`Journal::begin_image`] first.
    fn image_due(&self) -> bool {
        false
    }
    /// The records that follow, up to [`Journal::end_image`], are the shard's whole state
    /// (a snapshot): once they are durable, older files can go.
    fn begin_image(&mut self) {}
    /// The end of the records begun with [`Journal::begin_image`].
    fn end_image(&mut self) {}
    /// Whether [`Journal::take_batch`] has something (the runtime wakes its writer on it).
    fn has_batch(&self) -> bool {
        false
    }
    /// The runtime's side: everything up to `sequence` is written (and synced as the sync mode
    /// asks), told before [`super::Shard::on_durable`], so that [`Journal::barrier`] knows.
    fn mark_durable(&mut self, sequence: u64) {
        let _ = sequence;
    }
}

/// Bytes for the runtime to write, and what is durable once they are.
#[derive(Debug, Default)]
pub struct JournalBatch {
    /// Encoded frames (and segment headers), in order.
    pub bytes: Vec<u8>,
    /// The sequence number of the batch's last record.
    pub last_sequence: u64,
    /// Where `bytes` go: consecutive pieces, each for one file, in order (their lengths add up
    /// to `bytes.len()`).
    pub parts: Vec<BatchPart>,
}

/// A piece of a [`JournalBatch`] and the file it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPart {
    /// The file.
    pub target: BatchTarget,
    /// Bytes of the batch, from where the previous part ended.
    pub len: usize,
}

/// The file a [`BatchPart`] goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchTarget {
    /// Appended to the shard's log segment `sequence`; `create`: the file is new (the part
    /// starts with its header) and every earlier log segment is closed.
    Log {
        /// The segment sequence.
        sequence: u64,
        /// Whether the part starts the file.
        create: bool,
    },
    /// A whole snapshot (header, image records, checkpoint) of the state as of the end of log
    /// segment `sequence`: written under a temporary name, synced, renamed; once it is, the
    /// shard's older files are no longer needed.
    Snapshot {
        /// The last log segment it covers.
        sequence: u64,
    },
}

/// No persistence: every change is "durable" at once, nothing is written.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn append(&mut self, _record: &JournalRecord<'_>) -> Durability {
        Durability::Now
    }
}

/// The hooks one shard uses.
#[derive(Debug)]
pub struct Hooks {
    /// CONNECT decisions.
    pub admission: Box<dyn Admission>,
    /// Topic permissions.
    pub authorization: Box<dyn Authorization>,
    /// Durable state changes.
    pub journal: Box<dyn Journal>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            admission: Box::new(DefaultAdmission::default()),
            authorization: Box::new(AllowAll),
            journal: Box::new(NoJournal),
        }
    }
}

//! The home-shard role of the client-id ownership protocol (see the parent module docs): one registration per client id, one takeover in flight at a time.

use super::*;

#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) shard: u16,
    pub(super) token: u64,
}

/// A claim waiting at the home shard until the previous takeover of its client id settles.
#[derive(Debug, Clone)]
pub(super) struct WaitingClaim {
    pub(super) owner: Owner,
    pub(super) clean_start: bool,
}

/// The home shard's record of one client id (see the module docs for its state machine):
/// 32 bytes, as there is one per connected client.
#[derive(Debug, Clone)]
pub(super) struct Registration {
    /// The newest granted claim's token (see [`Registration::owner`]); its shard is
    /// `owner_shard`. Kept apart so `settled` shares the shard's word: 24 bytes, not 32.
    owner_token: u64,
    owner_shard: u16,
    /// The owner's claimant has installed the session and no stub points at an older place.
    pub(super) settled: bool,
    /// The user name and the waiting claim, boxed together: most registrations have neither.
    rare: Option<Box<RareParts>>,
}

#[derive(Debug, Clone, Default)]
struct RareParts {
    /// The user name of the owner's client. Only a claim with the same user name may take the
    /// client id over while the registration lasts (the session lives or is stored), when user
    /// names are authenticated (a password file is configured). Every granted claim passed
    /// that check, so it is the user name of every claim of this registration.
    username: Option<MqttStr>,
    /// The next claim, started once the owner settles.
    waiting: Option<WaitingClaim>,
}

impl Registration {
    pub(super) fn new(owner: Owner, username: Option<MqttStr>, settled: bool) -> Self {
        let mut registration = Registration {
            owner_token: owner.token,
            owner_shard: owner.shard,
            settled,
            rare: None,
        };
        registration.set_username(username);
        registration
    }

    /// The newest granted claim.
    pub(super) fn owner(&self) -> Owner {
        Owner {
            shard: self.owner_shard,
            token: self.owner_token,
        }
    }

    /// Makes `owner` the newest granted claim; the previous one is returned.
    pub(super) fn set_owner(&mut self, owner: Owner) -> Owner {
        let old = self.owner();
        self.owner_token = owner.token;
        self.owner_shard = owner.shard;
        old
    }

    /// The user name of the owner's client (see [`RareParts::username`]).
    pub(super) fn username(&self) -> Option<&MqttStr> {
        self.rare.as_ref()?.username.as_ref()
    }

    pub(super) fn set_username(&mut self, username: Option<MqttStr>) {
        if username.is_some() || self.rare.is_some() {
            self.rare.get_or_insert_with(Default::default).username = username;
            self.shed();
        }
    }

    /// The next claim, started once the owner settles.
    pub(super) fn waiting(&self) -> Option<&WaitingClaim> {
        self.rare.as_ref()?.waiting.as_ref()
    }

    pub(super) fn take_waiting(&mut self) -> Option<WaitingClaim> {
        let waiting = self.rare.as_mut()?.waiting.take();
        self.shed();
        waiting
    }

    pub(super) fn set_waiting(&mut self, waiting: WaitingClaim) {
        self.rare.get_or_insert_with(Default::default).waiting = Some(waiting);
    }

    /// Frees the boxed parts once both are empty.
    fn shed(&mut self) {
        if self
            .rare
            .as_ref()
            .is_some_and(|r| r.username.is_none() && r.waiting.is_none())
        {
            self.rare = None;
        }
    }
}

impl Shard {
    /// Home-shard role: a new claim. Granted at once when nobody owns the id, handed to the
    /// owner as a takeover when its claim has settled, otherwise kept waiting (replacing, and
    /// denying, an older waiting claim).
    pub(super) fn on_claim(
        &mut self,
        client_id: MqttStr,
        token: u64,
        shard: u16,
        clean_start: bool,
        username: Option<MqttStr>,
    ) {
        let claim = Owner { shard, token };
        let users_own_ids = self.config.auth_files.passwords.is_some();
        let Some(registration) = self.registry.get_mut(&client_id) else {
            self.registry
                .insert(client_id, Registration::new(claim, username, false));
            return self.send(
                usize::from(shard),
                ShardMsg::Granted {
                    token,
                    session: None,
                    handover: None,
                    recent: None,
                    origins: Vec::new(),
                },
            );
        };
        if users_own_ids && registration.username() != username.as_ref() {
            // The id belongs to another user's live or stored session: refused, not taken over
            // (which would hand that user's queued messages to this client).
            return self.send(
                usize::from(shard),
                ShardMsg::Denied {
                    token,
                    reason: ReasonCode::NotAuthorized,
                },
            );
        }
        // Same user (or user names not authenticated): the registration keeps the newest.
        registration.set_username(username);
        if !registration.settled {
            // A takeover of this id is still in flight: this claim waits for it. An older
            // waiting claim lost the race before it was granted; its clean start still
            // applies, since it would have discarded the session before this one took over.
            let mut clean_start = clean_start;
            if let Some(older) = registration.take_waiting() {
                clean_start |= older.clean_start;
                self.send(
                    usize::from(older.owner.shard),
                    ShardMsg::Denied {
                        token: older.owner.token,
                        reason: ReasonCode::ServerBusy,
                    },
                );
            }
            if let Some(registration) = self.registry.get_mut(&client_id) {
                registration.set_waiting(WaitingClaim {
                    owner: claim,
                    clean_start,
                });
            }
            return;
        }
        self.start_takeover(client_id, claim, clean_start);
    }

    /// Home-shard role: `claim` becomes the owner; the settled previous owner hands over.
    pub(super) fn start_takeover(&mut self, client_id: MqttStr, claim: Owner, clean_start: bool) {
        let Some(registration) = self.registry.get_mut(&client_id) else {
            return;
        };
        let old = registration.set_owner(claim);
        registration.settled = false;
        self.send(
            usize::from(old.shard),
            ShardMsg::TakeOver {
                client_id,
                old_token: old.token,
                new_shard: claim.shard,
                new_token: claim.token,
                clean_start,
            },
        );
    }

    /// Home-shard role: the owner's claim settled; a waiting claim may take over now.
    pub(super) fn on_settled(&mut self, client_id: MqttStr, token: u64) {
        let Some(registration) = self.registry.get_mut(&client_id) else {
            return;
        };
        if registration.owner().token != token {
            return;
        }
        registration.settled = true;
        if let Some(next) = registration.take_waiting() {
            self.start_takeover(client_id, next.owner, next.clean_start);
        }
    }

    /// Home-shard role: the session of claim `token` ended. A waiting claim gets the id with
    /// no session to resume.
    pub(super) fn on_release(&mut self, client_id: MqttStr, token: u64) {
        let Some(registration) = self.registry.get_mut(&client_id) else {
            return;
        };
        if registration.owner().token != token {
            return;
        }
        match registration.take_waiting() {
            Some(next) => {
                registration.set_owner(next.owner);
                registration.settled = false;
                self.send(
                    usize::from(next.owner.shard),
                    ShardMsg::Granted {
                        token: next.owner.token,
                        session: None,
                        handover: None,
                        recent: None,
                        origins: Vec::new(),
                    },
                );
            }
            None => {
                self.registry.remove(&client_id);
            }
        }
    }
}

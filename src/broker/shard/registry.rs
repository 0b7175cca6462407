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

/// The home shard's record of one client id (see the module docs for its state machine).
#[derive(Debug, Clone)]
pub(super) struct Registration {
    /// The newest granted claim.
    pub(super) owner: Owner,
    /// The user name of the owner's client. Only a claim with the same user name may take the
    /// client id over while the registration lasts (the session lives or is stored), when user
    /// names are authenticated (a password file is configured). Every granted claim passed
    /// that check, so it is the user name of every claim of this registration.
    pub(super) username: Option<MqttStr>,
    /// The owner's claimant has installed the session and no stub points at an older place.
    pub(super) settled: bool,
    /// The next claim, started once the owner settles.
    pub(super) waiting: Option<WaitingClaim>,
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
            self.registry.insert(
                client_id,
                Registration {
                    owner: claim,
                    username,
                    settled: false,
                    waiting: None,
                },
            );
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
        if users_own_ids && registration.username != username {
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
        registration.username = username;
        if !registration.settled {
            // A takeover of this id is still in flight: this claim waits for it. An older
            // waiting claim lost the race before it was granted; its clean start still
            // applies, since it would have discarded the session before this one took over.
            let mut clean_start = clean_start;
            if let Some(older) = registration.waiting.take() {
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
                registration.waiting = Some(WaitingClaim {
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
        let old = std::mem::replace(&mut registration.owner, claim);
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
        if registration.owner.token != token {
            return;
        }
        registration.settled = true;
        if let Some(next) = registration.waiting.take() {
            self.start_takeover(client_id, next.owner, next.clean_start);
        }
    }

    /// Home-shard role: the session of claim `token` ended. A waiting claim gets the id with
    /// no session to resume.
    pub(super) fn on_release(&mut self, client_id: MqttStr, token: u64) {
        let Some(registration) = self.registry.get_mut(&client_id) else {
            return;
        };
        if registration.owner.token != token {
            return;
        }
        match registration.waiting.take() {
            Some(next) => {
                registration.owner = next.owner;
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

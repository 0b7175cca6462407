//! The extension point for MQTT 5.0 enhanced authentication (§4.12): an [`Authenticator`] per
//! authentication method, driven by CONNECT and AUTH packets. Sans-I/O, like the session.
//!
//! No method ships yet, so every CONNECT that names one is refused with CONNACK 0x8C (Bad
//! authentication method), as the specification requires for unsupported methods. A method
//! (SCRAM, Kerberos, a token exchange) is added by implementing [`Authenticator`] and
//! registering it in [`AuthMethods`].

pub mod files;
#[cfg(feature = "runtime")]
pub mod passwd;
pub mod password;

pub use files::{AuthFiles, LoadedFile};

use bytes::Bytes;

use crate::codec::{MqttStr, ReasonCode};

/// The next step of an authentication exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Authenticated: the broker sends CONNACK success (or AUTH success on re-authentication).
    Success,
    /// Send AUTH 0x18 (continue authentication) with this data and wait for the client's AUTH.
    Continue(Bytes),
    /// Refuse with this reason code (CONNACK or DISCONNECT).
    Fail(ReasonCode),
}

/// One enhanced-authentication method. Implementations keep per-connection state in `state`.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// The method name clients put in the Authentication Method property.
    fn method(&self) -> &str;
    /// Starts an exchange from CONNECT (or an AUTH 0x19 re-authentication).
    fn start(
        &self,
        client_id: &MqttStr,
        data: Option<&Bytes>,
        state: &mut Option<Box<dyn std::any::Any + Send>>,
    ) -> AuthStep;
    /// Continues an exchange from the client's AUTH 0x18.
    fn step(
        &self,
        data: Option<&Bytes>,
        state: &mut Option<Box<dyn std::any::Any + Send>>,
    ) -> AuthStep;
}

/// The registered methods.
#[derive(Debug, Default)]
pub struct AuthMethods {
    methods: Vec<Box<dyn Authenticator>>,
}

impl AuthMethods {
    /// Adds a method.
    pub fn register(&mut self, method: Box<dyn Authenticator>) {
        self.methods.push(method);
    }

    /// The authenticator for `method`, if one is registered.
    pub fn find(&self, method: &str) -> Option<&dyn Authenticator> {
        self.methods
            .iter()
            .find(|m| m.method() == method)
            .map(|m| m.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Token;

    impl Authenticator for Token {
        fn method(&self) -> &str {
            "token"
        }
        fn start(
            &self,
            _: &MqttStr,
            data: Option<&Bytes>,
            _: &mut Option<Box<dyn std::any::Any + Send>>,
        ) -> AuthStep {
            match data {
                Some(data) if &data[..] == b"ok" => AuthStep::Success,
                Some(_) => AuthStep::Fail(ReasonCode::NotAuthorized),
                None => AuthStep::Continue(Bytes::from_static(b"challenge")),
            }
        }
        fn step(
            &self,
            data: Option<&Bytes>,
            state: &mut Option<Box<dyn std::any::Any + Send>>,
        ) -> AuthStep {
            self.start(&MqttStr::default(), data, state)
        }
    }

    #[test]
    fn lookup_by_method_name() {
        let mut methods = AuthMethods::default();
        assert!(methods.find("token").is_none());
        methods.register(Box::new(Token));
        let token = methods.find("token").unwrap();
        let mut state = None;
        assert_eq!(
            token.start(&MqttStr::from("c"), None, &mut state),
            AuthStep::Continue(Bytes::from_static(b"challenge"))
        );
        assert_eq!(
            token.step(Some(&Bytes::from_static(b"ok")), &mut state),
            AuthStep::Success
        );
        assert!(methods.find("scram").is_none());
    }
}

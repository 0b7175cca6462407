//! A session's subscriptions: a map allocated with the first one, so that a session without
//! any (many idle clients) pays a pointer instead of an empty 48-byte map.

use std::collections::HashMap;

use crate::codec::{MqttStr, SubscriptionOptions};

/// A subscription's options and identifier (0: none).
pub type Subscription = (SubscriptionOptions, u32);

type Map = HashMap<MqttStr, Subscription>;

/// Filter (as sent, including `$share/...`) to options and identifier.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    // Boxed on purpose: 8 bytes in every session instead of 48 (see the module docs).
    #[allow(clippy::box_collection)]
    map: Option<Box<Map>>,
}

impl Subscriptions {
    /// No subscriptions (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the subscription to `filter`; the one it replaced, if any.
    pub fn insert(&mut self, filter: MqttStr, subscription: Subscription) -> Option<Subscription> {
        self.map
            .get_or_insert_with(Default::default)
            .insert(filter, subscription)
    }

    /// Removes the subscription to `filter` (the map goes with the last one).
    pub fn remove(&mut self, filter: &str) -> Option<Subscription> {
        let map = self.map.as_mut()?;
        let removed = map.remove(filter);
        if map.is_empty() {
            self.map = None;
        }
        removed
    }

    /// The subscription to `filter`.
    pub fn get(&self, filter: &str) -> Option<&Subscription> {
        self.map.as_ref()?.get(filter)
    }

    /// Whether `filter` is subscribed to.
    pub fn contains_key(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    /// How many subscriptions.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |map| map.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every subscription, in no particular order.
    pub fn iter(&self) -> Iter<'_> {
        self.map.as_deref().into_iter().flatten()
    }

    /// Every filter, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &MqttStr> {
        self.iter().map(|(filter, _)| filter)
    }
}

/// The iterator of [`Subscriptions::iter`].
pub type Iter<'a> = std::iter::Flatten<std::option::IntoIter<&'a Map>>;

impl<'a> IntoIterator for &'a Subscriptions {
    type Item = (&'a MqttStr, &'a Subscription);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

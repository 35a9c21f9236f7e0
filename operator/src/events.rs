//! Publishes events.k8s.io/v1 Events about the objects this operator reconciles, and the
//! repeats of one as the Event's series, as Kubernetes' own event recorders do.
//!
//! I/O: creates and merge-patches Events through the API server. Memory: one small entry
//! per series seen in the last [`SERIES_WINDOW`]: a hash of what makes two Events the same
//! (type, reason, action, reporter, the object), the name of the Event that holds the
//! series and its count. kube's `Recorder` kept every Event it sent for six minutes (about
//! 1.7 KB each: the object reference, the note, the metadata), and scanned all of them
//! under a lock on every publish; while thousands of Gateways were being created that was
//! a large part of the operator's memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// How long after its last repeat an Event's series continues: the window Kubernetes'
/// recorders use; a repeat after it starts a new Event.
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// The longest note the API server accepts on an events.k8s.io/v1 Event, in bytes.
pub const NOTE_LIMIT: usize = 1024;

/// How often at most the expired series are dropped: a sweep walks every entry, so it is
/// not done on every publish.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Where an Event's series is kept.
#[derive(Debug)]
struct Series {
    /// The name of the Event (in the object's namespace) that holds the series.
    name: Box<str>,
    /// How many times it was published; 1 before the first repeat.
    count: i32,
    last: Instant,
}

#[derive(Debug)]
struct State {
    series: HashMap<u64, Series>,
    swept: Instant,
}

/// Publishes Events as `controller` (`instance`: which replica).
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    hasher: std::hash::RandomState,
    state: Mutex<State>,
}

/// One Event to publish.
#[derive(Debug, Clone, Copy)]
pub struct Note<'a> {
    /// A Warning rather than Normal.
    pub warning: bool,
    /// Why (CamelCase, as a condition's reason).
    pub reason: &'a str,
    /// What the operator was doing.
    pub action: &'a str,
    /// For people; cut to [`NOTE_LIMIT`] bytes.
    pub note: &'a str,
}

impl Recorder {
    /// A recorder reporting as `controller`, replica `instance` (the controller's name when
    /// there is none).
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            hasher: std::hash::RandomState::new(),
            state: Mutex::new(State {
                series: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// How many series are remembered (for tests).
    pub fn remembered(&self) -> usize {
        self.lock().series.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What makes two Events one series: the fields Kubernetes' recorders compare (not the
    /// note, which may carry a changing detail).
    fn key(&self, ev: &Note<'_>, regarding: &ObjectReference) -> u64 {
        let mut h = self.hasher.build_hasher();
        (ev.warning, ev.reason, ev.action).hash(&mut h);
        (
            &regarding.api_version,
            &regarding.kind,
            &regarding.namespace,
            &regarding.name,
            &regarding.uid,
        )
            .hash(&mut h);
        h.finish()
    }

    /// Publishes `ev` about `regarding`: a new Event, or, when the same Event was published
    /// within [`SERIES_WINDOW`], a patch of that Event's series.
    pub async fn publish(
        &self,
        ev: Note<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = self.key(&ev, regarding);
        let now = Instant::now();
        let repeat = {
            let mut state = self.lock();
            if now.saturating_duration_since(state.swept) >= SWEEP_EVERY {
                state
                    .series
                    .retain(|_, s| now.saturating_duration_since(s.last) < SERIES_WINDOW);
                state.swept = now;
            }
            match state.series.get_mut(&key) {
                Some(s) if now.saturating_duration_since(s.last) < SERIES_WINDOW => {
                    s.count = s.count.saturating_add(1);
                    s.last = now;
                    Some((s.name.clone(), s.count))
                }
                _ => None,
            }
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events = Api::<Event>::namespaced(self.client.clone(), namespace);
        if let Some((name, count)) = repeat {
            let series = json!({"series": {
                "count": count,
                "lastObservedTime": MicroTime(Timestamp::now()),
            }});
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // The Event is gone (its TTL, or someone deleted it): start again.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(&ev, regarding);
        let name = event.metadata.name.clone().unwrap_or_default();
        events.create(&PostParams::default(), &event).await?;
        self.lock().series.insert(
            key,
            Series {
                name: name.into_boxed_str(),
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    fn event(&self, ev: &Note<'_>, regarding: &ObjectReference) -> Event {
        let now = Timestamp::now();
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                // Unique per object and instant, as Kubernetes' recorders name them.
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
            reason: Some(ev.reason.into()),
            action: Some(ev.action.into()),
            note: Some(cut(ev.note, NOTE_LIMIT).into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

/// `s` cut to at most `limit` bytes, at a character boundary.
fn cut(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short", NOTE_LIMIT), "short");
        let long = "é".repeat(600); // 1,200 bytes
        let c = cut(&long, NOTE_LIMIT);
        assert!(c.len() <= NOTE_LIMIT);
        assert_eq!(c.len(), NOTE_LIMIT); // 2-byte characters: 1024 is a boundary
        let odd = format!("x{long}");
        let c = cut(&odd, NOTE_LIMIT);
        assert_eq!(c.len(), NOTE_LIMIT - 1);
        assert!(odd.starts_with(c));
    }
}

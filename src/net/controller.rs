//! quinn's side of [`crate::congestion::Controller`]: the events quinn
//! reports, passed on with the clock quinn read.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

use crate::congestion;

/// Builds a [`congestion::Controller`] for each path.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ModelFactory;

impl ControllerFactory for ModelFactory {
    fn build(self: Arc<Self>, _now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Model { inner: congestion::Controller::new(current_mtu), logged: None })
    }
}

#[derive(Clone, Debug)]
struct Model {
    inner: congestion::Controller,
    /// When the state was last logged, and the phase then.
    logged: Option<(Instant, congestion::Phase)>,
}

/// How often the model's state is logged (at debug level) while it runs.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl Model {
    fn log(&mut self, now: Instant, in_flight: u64) {
        let phase = self.inner.phase();
        let due = self.logged.is_none_or(|(at, was)| was != phase || now.saturating_duration_since(at) >= LOG_EVERY);
        if due {
            self.logged = Some((now, phase));
            tracing::debug!(
                ?phase,
                window = self.inner.window(),
                in_flight,
                mbit = self.inner.bandwidth() * 8e-6,
                min_rtt_ms = self.inner.min_rtt().unwrap_or_default().as_secs_f64() * 1e3,
                "congestion"
            );
        }
    }
}

impl Controller for Model {
    fn on_sent(&mut self, now: Instant, _bytes: u64, _last_packet_number: u64) {
        self.inner.on_sent(now);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, _rtt: &RttEstimator) {
        self.inner.on_ack(now, sent, bytes, app_limited);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, _app_limited: bool, _largest: Option<u64>) {
        self.inner.on_end_acks(in_flight);
        self.log(now, in_flight);
    }

    fn on_congestion_event(&mut self, _now: Instant, _sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.inner.on_congestion(is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.set_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.inner.window();
        metrics.pacing_rate = Some(self.inner.bandwidth() as u64 * 8);
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        congestion::INITIAL_WINDOW
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds `inner`'s controllers, adding up the bytes the peer acknowledged
/// into `acked`: what reached the peer, where bytes written to a stream
/// may still wait in its buffers (a push's progress).
pub(super) struct Counting {
    pub(super) inner: Arc<dyn ControllerFactory + Send + Sync>,
    pub(super) acked: Arc<AtomicU64>,
}

impl ControllerFactory for Counting {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let inner = Arc::clone(&self.inner).build(now, current_mtu);
        Box::new(Counted { inner, acked: Arc::clone(&self.acked) })
    }
}

/// A controller that counts acknowledged bytes and leaves every decision
/// to the one it wraps.
struct Counted {
    inner: Box<dyn Controller>,
    acked: Arc<AtomicU64>,
}

impl Controller for Counted {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.acked.fetch_add(bytes, Ordering::Relaxed);
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        self.inner.on_congestion_event(now, sent, persistent, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Counted { inner: self.inner.clone_box(), acked: Arc::clone(&self.acked) })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self.inner.into_any()
    }
}

//! quinn's side of [`crate::congestion::Controller`]: the events quinn
//! reports, passed on with the clock quinn read.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

use crate::congestion;

/// Builds a [`congestion::Controller`] for each path.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelFactory;

impl ControllerFactory for ModelFactory {
    fn build(self: Arc<Self>, _now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Model(congestion::Controller::new(current_mtu)))
    }
}

#[derive(Clone, Debug)]
struct Model(congestion::Controller);

impl Controller for Model {
    fn on_sent(&mut self, now: Instant, _bytes: u64, _last_packet_number: u64) {
        self.0.on_sent(now);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, _rtt: &RttEstimator) {
        self.0.on_ack(now, sent, bytes, app_limited);
    }

    fn on_end_acks(&mut self, _now: Instant, in_flight: u64, _app_limited: bool, _largest: Option<u64>) {
        self.0.on_end_acks(in_flight);
    }

    fn on_congestion_event(&mut self, _now: Instant, _sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.0.on_congestion(is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.0.set_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        self.0.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.0.window();
        metrics.pacing_rate = Some(self.0.bandwidth() as u64 * 8);
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

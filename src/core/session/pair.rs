//! A sender and a receiver driven in memory: each message one side gives
//! is handed to the other at once, as a transport would deliver it, with
//! the receiver's flow control respected. Local pushes and tests run
//! sessions this way, with no transport between the sides.

use xfer_protocol::msg::Message;

use super::destination::{ChunkReader, Destination};
use super::{Receiver, Sender, SessionError};

/// What crossed between the sides, besides chunks and entry changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Messages handed to the receiver.
    pub to_receiver: u64,
    /// Messages handed to the sender.
    pub to_sender: u64,
    /// Signature bytes the receiver offered for deltas, refinements
    /// included (the reverse direction).
    pub signature_bytes: u64,
    /// Bytes of the sender's requests for finer signatures.
    pub refine_request_bytes: u64,
}

impl Traffic {
    /// Hands `message` to the receiver: from data stream `stream`, or
    /// from the control stream.
    fn hand_to<D: Destination>(
        &mut self,
        receiver: &mut Receiver<D>,
        stream: Option<usize>,
        message: Message,
    ) -> Result<(), SessionError> {
        self.count(&message);
        self.to_receiver += 1;
        match stream {
            Some(stream) => receiver.handle_data(stream as u64, message),
            None => receiver.handle(message),
        }
    }

    fn count(&mut self, message: &Message) {
        match message {
            Message::NeedChunk(need) => {
                self.signature_bytes += need.signature.as_ref().map_or(0, |s| s.len() as u64);
            }
            Message::FineSignatures(fine) => {
                self.signature_bytes += fine.signatures.iter().map(|s| s.len() as u64).sum::<u64>();
            }
            Message::RefineRequest(refine) => self.refine_request_bytes += refine.ranges.len() as u64,
            _ => {}
        }
    }
}

/// The side a message is handed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toward {
    /// From the sender to the receiver.
    Receiver,
    /// From the receiver to the sender.
    Sender,
}

/// Runs the session between `sender` and `receiver` until neither has
/// anything left to say. The session completed if both are then finished
/// ([`Sender::is_finished`], [`Receiver::is_finished`]).
///
/// # Errors
/// The first error either side raises; the session is then over (the
/// receiver may still [`Receiver::salvage`] what it verified).
pub fn run<R: ChunkReader, D: Destination>(
    sender: &mut Sender<R>,
    receiver: &mut Receiver<D>,
) -> Result<Traffic, SessionError> {
    run_with(sender, receiver, |_, message| message)
}

/// [`run`], with each message passed through `carry` on its way (to encode
/// and decode it as the wire would, count it, or tamper with it).
///
/// # Errors
/// As [`run`].
pub fn run_with<R: ChunkReader, D: Destination>(
    sender: &mut Sender<R>,
    receiver: &mut Receiver<D>,
    mut carry: impl FnMut(Toward, Message) -> Message,
) -> Result<Traffic, SessionError> {
    let mut traffic = Traffic::default();
    loop {
        let mut progressed = false;
        // Chunk answers never wait behind entry changes, as on the wire.
        while let Some((stream, message)) = sender.poll_data()? {
            traffic.hand_to(receiver, Some(stream), carry(Toward::Receiver, message))?;
            progressed = true;
        }
        while receiver.wants_input() {
            let Some(message) = sender.poll_transmit() else { break };
            traffic.hand_to(receiver, None, carry(Toward::Receiver, message))?;
            progressed = true;
        }
        while let Some(message) = receiver.poll_transmit() {
            let message = carry(Toward::Sender, message);
            traffic.count(&message);
            traffic.to_sender += 1;
            sender.handle(message)?;
            progressed = true;
        }
        if !progressed {
            return Ok(traffic);
        }
    }
}

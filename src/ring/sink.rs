//! [`PollSender`]: a [`Sender`] as a `futures_sink::Sink` (tokio-util's `PollSender`).

use super::SendError;
use super::sender::{Sender, poll_permit};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A [`Sender`] as a `futures_sink::Sink<T>`: `poll_ready` waits for a permit (as
/// [`Sender::reserve`]), `start_send` sends with it, `poll_flush` has nothing to
/// wait for (a sent value is queued at once), `poll_close` gives up the sender.
///
/// The error is [`SendError`]`<Option<T>>`: `None` from `poll_ready` when the
/// receiver closed the channel or is gone, `Some(value)` from a `start_send` that
/// had no permit (or came after `poll_close`), so the value is never lost.
///
/// ```
/// use futures_sink::Sink;
/// use percid::ring::PollSender;
/// use std::pin::Pin;
/// use std::task::{Context, Poll, Waker};
///
/// let (tx, mut rx) = percid::ring::channel::<u32>(4).unwrap();
/// let mut sink = PollSender::new(tx);
/// let mut cx = Context::from_waker(Waker::noop());
/// assert!(matches!(Pin::new(&mut sink).poll_ready(&mut cx), Poll::Ready(Ok(()))));
/// Pin::new(&mut sink).start_send(8).unwrap();
/// assert!(matches!(Pin::new(&mut sink).poll_close(&mut cx), Poll::Ready(Ok(()))));
/// assert_eq!(rx.recv(), Ok(8));
/// assert!(rx.recv().is_err());
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub struct PollSender<T> {
    sender: Option<Sender<T>>,
    /// Registration as a waiting sender while `poll_ready` waits.
    id: Option<u64>,
    /// A permit is held (taken by `poll_ready`, used by `start_send`).
    permit: bool,
}

impl<T> PollSender<T> {
    /// Wraps `sender`.
    pub fn new(sender: Sender<T>) -> PollSender<T> {
        PollSender {
            sender: Some(sender),
            id: None,
            permit: false,
        }
    }

    /// The sender, until `poll_close`.
    pub fn get_ref(&self) -> Option<&Sender<T>> {
        self.sender.as_ref()
    }

    /// The sender back (`None` after `poll_close`); a held permit is given back.
    pub fn into_inner(mut self) -> Option<Sender<T>> {
        self.release();
        self.sender.take()
    }

    /// Waits for a permit, as the `Sink`'s `poll_ready`.
    ///
    /// # Errors
    /// [`SendError`]`(())` when the receiver closed the channel or is gone, or the
    /// sink was closed.
    pub fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError<()>>> {
        if self.permit {
            return Poll::Ready(Ok(()));
        }
        let Some(sender) = self.sender.as_ref() else {
            return Poll::Ready(Err(SendError(())));
        };
        let ready = poll_permit(&sender.chan, &mut self.id, cx);
        if let Poll::Ready(Ok(())) = ready {
            self.permit = true;
        }
        ready
    }

    /// Sends `value` with the permit `poll_reserve` took.
    ///
    /// # Errors
    /// The value back when no permit is held.
    pub fn send_item(&mut self, value: T) -> Result<(), SendError<T>> {
        match self.sender.as_ref() {
            Some(sender) if self.permit => {
                self.permit = false;
                sender.chan.send_permitted(value);
                Ok(())
            }
            _ => Err(SendError(value)),
        }
    }

    fn release(&mut self) {
        if let Some(sender) = self.sender.as_ref() {
            if let Some(id) = self.id.take() {
                sender.chan.tx.0.unregister(id);
            }
            if std::mem::take(&mut self.permit) {
                sender.chan.release_permit();
            }
        }
    }
}

impl<T> Unpin for PollSender<T> {}

#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
impl<T> futures_sink::Sink<T> for PollSender<T> {
    type Error = SendError<Option<T>>;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_reserve(cx).map_err(|_| SendError(None))
    }

    fn start_send(mut self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        self.send_item(item)
            .map_err(|SendError(v)| SendError(Some(v)))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.release();
        self.sender = None;
        Poll::Ready(Ok(()))
    }
}

impl<T> Drop for PollSender<T> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<T> fmt::Debug for PollSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollSender")
            .field("open", &self.sender.is_some())
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

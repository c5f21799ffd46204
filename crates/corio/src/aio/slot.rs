//! A slot for one value of a type this layer does not know: the context's
//! thread pool, which sits a floor above `aio` (see the crate docs).

use std::any::Any;
use std::sync::OnceLock;

/// Holds at most one value, set once, of a type chosen by its user.
#[derive(Default)]
pub(crate) struct OpaqueSlot(OnceLock<Box<dyn Any + Send + Sync>>);

impl OpaqueSlot {
    /// The value, put there by `init` on first use (as `OnceLock::get_or_init`).
    ///
    /// # Panics
    /// If the slot holds a value of another type than `T` (a slot has one
    /// user, which always asks for the same type).
    pub(crate) fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> &T {
        self.0
            .get_or_init(|| Box::new(init()))
            .downcast_ref()
            .expect("an opaque slot is always asked for the type it holds")
    }
}

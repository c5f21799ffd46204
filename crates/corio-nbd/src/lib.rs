//! corio-nbd

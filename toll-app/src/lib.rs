//! The toll app's library part: the generator of realistic gantry
//! transactions, shared with the load tests so that simulated nodes send
//! the same records as the app does.

pub mod generator;

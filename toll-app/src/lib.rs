//! The gantry simulator's transaction generator as a library, so that load
//! tests produce the same realistic records as the toll app in a container.

pub mod generator;

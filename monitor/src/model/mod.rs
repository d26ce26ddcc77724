//! The domain model, built from scans and probe maps: listeners (accept queues, SYN queues,
//! drops, peaks), connection pools (client workload × destination), service classes of
//! destinations, and the retry-storm detector with its robust statistics. These are the figures
//! that the exporter, the alert rules and the CLI all show.
pub mod destinations;
pub mod listeners;
pub mod order;
pub mod peak_window;
pub mod pool_ids;
pub mod pools;
pub mod queue_wait;
pub mod services;
pub mod stats;
pub mod storms;

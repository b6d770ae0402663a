//! 1C as a target of the sync runtime (system `onec`): the pull exchange,
//! where 1C polls the gateway for the counterparties to create
//! ([`pull`], `[sync.onec] transport = "pull"`; its XML form [`pull_xml`]).

pub mod pull;
pub mod pull_xml;

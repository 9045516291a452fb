//! The in-memory backend passes both conformance suites.

mod store {
    use outbox_testkit::store_suite::MemoryStoreHarness;

    async fn harness() -> MemoryStoreHarness {
        MemoryStoreHarness::default()
    }

    outbox_testkit::store_conformance!(harness);
}

mod broker {
    use outbox_testkit::broker_suite::MemoryBrokerHarness;

    async fn harness() -> MemoryBrokerHarness {
        MemoryBrokerHarness::default()
    }

    outbox_testkit::broker_conformance!(harness);
}

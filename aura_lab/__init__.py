"""The test lab: throw-away network namespaces (`netns.Lab`), the Aura server and clients in
them (`topology`), and the demo built on both. Used by the end-to-end tests, the system tests
and `bench/`; it is not part of the product (the packages ship `aura_common` and `services`)."""

//! Feature `testing`: one in-memory driver, one contract checker and one
//! reference model, for every test, property test and fuzzer.

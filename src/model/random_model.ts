// Temporary re-export: the generator lives in tools/random_model/. Delete this file once
// bench/peer.ts and tests/random_models_llamacpp_test.ts import from there.
export * from "../../tools/random_model/random_model.ts";

// Temporary re-export: the presets live in tools/random_model/. Delete this file once
// bench/peer.ts imports from there.
export * from "../../tools/random_model/presets.ts";

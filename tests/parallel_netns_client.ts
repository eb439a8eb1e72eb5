// Node 0 of tests/parallel_netns_test.ts, run inside its network namespace: rank 0 (and its local
// ranks) through the serving engine; prints the greedy run as JSON on stdout.
import { greedyRun, prompts } from "./parallel_helpers.ts";

const [model, masterAddr, masterPort, tp, pp] = Deno.args;
const run = await greedyRun(model, prompts(512, 16), {
  tensorParallelSize: Number(tp),
  pipelineParallelSize: Number(pp),
  nnodes: 2,
  nodeRank: 0,
  masterAddr,
  masterPort: Number(masterPort),
  bindAddr: masterAddr,
});
console.log(JSON.stringify(run));

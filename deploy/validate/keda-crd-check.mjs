// Validates KEDA objects against KEDA's CRD schemas, as packaged by @kubernetes-models/keda.
//
//   node keda-crd-check.mjs NODE_MODULES_DIR OBJECTS.json
//
// OBJECTS.json: a JSON array of objects (kind ScaledObject, ScaledJob, TriggerAuthentication or
// ClusterTriggerAuthentication, apiVersion keda.sh/v1alpha1), each with an extra "_source" naming
// where it came from. The CRD schemas check types and required fields (e.g. that every trigger
// metadata value is a string); they allow unknown fields, which check_manifests.py covers.
// Exit status: 0 all valid, 1 invalid objects, 2 usage or setup errors.
import { pathToFileURL } from "node:url";
import { readFileSync } from "node:fs";
import path from "node:path";

const KINDS = ["ScaledObject", "ScaledJob", "TriggerAuthentication", "ClusterTriggerAuthentication"];

async function main() {
  const [modulesDir, objectsFile] = process.argv.slice(2);
  if (!modulesDir || !objectsFile) {
    console.error("usage: node keda-crd-check.mjs NODE_MODULES_DIR OBJECTS.json");
    return 2;
  }
  const models = {};
  for (const kind of KINDS) {
    const file = path.join(modulesDir, "@kubernetes-models", "keda", "keda.sh", "v1alpha1", `${kind}.js`);
    try {
      models[kind] = (await import(pathToFileURL(file).href))[kind];
    } catch (e) {
      console.error(`keda-crd-check: cannot load ${file}: ${e.message}`);
      return 2;
    }
  }
  const objects = JSON.parse(readFileSync(objectsFile, "utf8"));
  let failures = 0;
  for (const { _source: source, ...obj } of objects) {
    const where = `${source}: ${obj.kind}/${obj.metadata?.name}`;
    if (obj.apiVersion !== "keda.sh/v1alpha1" || !models[obj.kind]) {
      console.error(`FAIL ${where}: not a known KEDA kind/apiVersion (${obj.apiVersion})`);
      failures++;
      continue;
    }
    try {
      new models[obj.kind](obj).validate();
      console.log(`ok   ${where} matches KEDA's CRD schema`);
    } catch (e) {
      failures++;
      const details = (e.errors || []).map((d) => `${d.instancePath || "/"} ${d.message || d.keyword}`);
      console.error(`FAIL ${where}: ${details.length ? details.join("; ") : e.message}`);
    }
  }
  return failures ? 1 : 0;
}

process.exitCode = await main();

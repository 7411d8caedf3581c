// The official libSQL JS client (@libsql/client, HTTP mode) against a
// running conductor-node: statements, batches, interactive transactions,
// errors and values. Usage: node client_test.mjs URL [TOKEN]
import { createClient } from "@libsql/client/http";
import assert from "node:assert/strict";

const [url, authToken] = process.argv.slice(2);
const client = createClient({ url, authToken, intMode: "bigint" });

const tests = [];
const test = (name, fn) => tests.push([name, fn]);

test("execute with positional and named args", async () => {
  await client.execute("CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT, f REAL, b BLOB)");
  const ins = await client.execute({ sql: "INSERT INTO kv VALUES (?, ?, ?, ?)", args: [1n, "one", 1.5, new Uint8Array([0, 1, 255])] });
  assert.equal(ins.rowsAffected, 1);
  assert.equal(ins.lastInsertRowid, 1n);
  await client.execute({ sql: "INSERT INTO kv VALUES (:id, :v, NULL, NULL)", args: { id: 9223372036854775807n, v: "max" } });
  const rs = await client.execute({ sql: "SELECT id, v, f, b FROM kv WHERE id = ?", args: [1n] });
  assert.deepEqual(rs.columns, ["id", "v", "f", "b"]);
  assert.deepEqual(rs.columnTypes, ["INTEGER", "TEXT", "REAL", "BLOB"]);
  assert.equal(rs.rows[0].v, "one");
  assert.equal(rs.rows[0].f, 1.5);
  assert.deepEqual([...new Uint8Array(rs.rows[0].b)], [0, 1, 255]);
  const max = await client.execute("SELECT id FROM kv WHERE v = 'max'");
  assert.equal(max.rows[0].id, 9223372036854775807n);
});

test("batch runs as one transaction", async () => {
  await client.batch([
    { sql: "INSERT INTO kv (id, v) VALUES (?, ?)", args: [10n, "ten"] },
    { sql: "INSERT INTO kv (id, v) VALUES (?, ?)", args: [11n, "eleven"] },
  ], "write");
  const rs = await client.execute("SELECT count(*) AS n FROM kv WHERE id IN (10, 11)");
  assert.equal(rs.rows[0].n, 2n);
  // A failing step rolls the whole batch back.
  await assert.rejects(client.batch([
    { sql: "INSERT INTO kv (id, v) VALUES (12, 'twelve')" },
    { sql: "INSERT INTO kv (id, v) VALUES (10, 'dup')" },
  ], "write"));
  const after = await client.execute("SELECT count(*) AS n FROM kv WHERE id = 12");
  assert.equal(after.rows[0].n, 0n);
});

test("interactive transaction commits across requests", async () => {
  const tx = await client.transaction("write");
  await tx.execute({ sql: "INSERT INTO kv (id, v) VALUES (?, ?)", args: [20n, "tx"] });
  const inside = await tx.execute("SELECT v FROM kv WHERE id = 20");
  assert.equal(inside.rows[0].v, "tx");
  await tx.commit();
  const rs = await client.execute("SELECT v FROM kv WHERE id = 20");
  assert.equal(rs.rows.length, 1);
});

test("interactive transaction rolls back", async () => {
  const tx = await client.transaction("write");
  await tx.execute("DELETE FROM kv");
  await tx.rollback();
  const rs = await client.execute("SELECT count(*) AS n FROM kv");
  assert.ok(rs.rows[0].n > 0n);
});

test("errors carry SQLite codes", async () => {
  await assert.rejects(
    client.execute("INSERT INTO kv (id, v) VALUES (1, 'again')"),
    (e) => { assert.match(String(e.code), /SQLITE_CONSTRAINT/); return true; },
  );
  await assert.rejects(client.execute("SELECT * FROM no_such_table"), /no such table/);
});

test("executeMultiple runs a sequence", async () => {
  await client.executeMultiple("CREATE TABLE m (x); INSERT INTO m VALUES (1); INSERT INTO m VALUES (2);");
  const rs = await client.execute("SELECT sum(x) AS s FROM m");
  assert.equal(rs.rows[0].s, 3n);
});

let passed = 0, failed = 0;
for (const [name, fn] of tests) {
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL - ${name}: ${e?.stack ?? e}`);
  }
}
client.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);

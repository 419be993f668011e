// sqlrows: a program of hvft's own, linked -static with Debian's
// libsqlite3.a, for the Linux personality's failover tests.
//
//   sqlrows insert DB N   insert N rows, one transaction each, printing
//                         "committed ID" once each commit returned
//   sqlrows verify DB     print "integrity ok" (or the problems), then
//                         "rows K" and each row's id, one per line
//   sqlrows reals DB      store REAL values, reopen DB, print them and
//                         what SQLite computes from them, as SQLite's text
//                         and as %.17g: its conversions use long double,
//                         so the x87's precision shows in them
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(sqlite3 *db, const char *what) {
	fprintf(stderr, "sqlrows: %s: %s\n", what, db ? sqlite3_errmsg(db) : "?");
	exit(2);
}

static void exec(sqlite3 *db, const char *sql) {
	char *err = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
		fprintf(stderr, "sqlrows: %s: %s\n", sql, err);
		exit(2);
	}
}

static int insert(sqlite3 *db, long n) {
	exec(db, "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)");
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, "INSERT INTO t(v) VALUES(?)", -1, &st, NULL) != SQLITE_OK) die(db, "prepare");
	char buf[64];
	for (long i = 1; i <= n; i++) {
		exec(db, "BEGIN");
		snprintf(buf, sizeof buf, "row %ld of %ld", i, n);
		sqlite3_bind_text(st, 1, buf, -1, SQLITE_TRANSIENT);
		if (sqlite3_step(st) != SQLITE_DONE) die(db, "insert");
		sqlite3_reset(st);
		exec(db, "COMMIT");
		printf("committed %lld\n", (long long)sqlite3_last_insert_rowid(db));
		fflush(stdout);
	}
	sqlite3_finalize(st);
	return 0;
}

static int verify(sqlite3 *db) {
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) != SQLITE_OK) die(db, "integrity_check");
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *r = (const char *)sqlite3_column_text(st, 0);
		printf(strcmp(r, "ok") == 0 ? "integrity ok\n" : "integrity: %s\n", r);
	}
	sqlite3_finalize(st);
	if (sqlite3_prepare_v2(db, "SELECT id FROM t ORDER BY id", -1, &st, NULL) != SQLITE_OK) die(db, "select");
	long k = 0;
	char *ids = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&ids, &len);
	while (sqlite3_step(st) == SQLITE_ROW) {
		fprintf(m, "%lld\n", (long long)sqlite3_column_int64(st, 0));
		k++;
	}
	fclose(m);
	printf("rows %ld\n%s", k, ids);
	free(ids);
	sqlite3_finalize(st);
	return 0;
}

// query prints every row of sql: each column as SQLite's text and, when
// it is a REAL, as %.17g of its double.
static void query(sqlite3 *db, const char *sql) {
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) die(db, sql);
	printf("%s\n", sql);
	while (sqlite3_step(st) == SQLITE_ROW) {
		for (int i = 0; i < sqlite3_column_count(st); i++) {
			int real = sqlite3_column_type(st, i) == SQLITE_FLOAT;
			double d = sqlite3_column_double(st, i);
			printf(" %s", (const char *)sqlite3_column_text(st, i));
			if (real) printf(" (%.17g)", d);
		}
		printf("\n");
	}
	sqlite3_finalize(st);
}

static int reals(sqlite3 **db, const char *path) {
	exec(*db, "CREATE TABLE r(x REAL)");
	exec(*db, "INSERT INTO r VALUES (0.1), (0.2), (0.3), (1.0/3), (2.5), (3.14159), (1e-300), (1e308), (123456.789), (-0.5)");
	exec(*db, "CREATE TABLE p(v REAL)");
	exec(*db, "INSERT INTO p VALUES (3.14159)");
	// Read back from the file, not from the connection's cache.
	sqlite3_close(*db);
	if (sqlite3_open(path, db) != SQLITE_OK) die(*db, "reopen");
	query(*db, "SELECT x, typeof(x) FROM r ORDER BY rowid");
	query(*db, "SELECT round(avg(x),4), avg(x), sum(x), total(x) FROM r WHERE x < 1e300");
	query(*db, "SELECT v, v = 3.14159, printf('%.20f', v) FROM p");
	query(*db, "SELECT julianday('2000-01-01'), julianday('2000-01-01 12:34:56.789'), datetime(2451545.25), strftime('%J', '2024-02-29 23:59:59.999')");
	query(*db, "SELECT 0.1 + 0.2, CAST('3.14159' AS REAL), CAST('1e-300' AS REAL), round(2.5), round(-2.5), round(1.005, 2), printf('%.15g', 0.1), 1e308 * 10");
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 3 || (strcmp(argv[1], "insert") == 0 && argc != 4)) {
		fprintf(stderr, "usage: sqlrows insert DB N | sqlrows verify DB | sqlrows reals DB\n");
		return 2;
	}
	sqlite3 *db;
	if (sqlite3_open(argv[2], &db) != SQLITE_OK) die(db, "open");
	int rc;
	if (strcmp(argv[1], "insert") == 0) {
		rc = insert(db, atol(argv[3]));
	} else if (strcmp(argv[1], "reals") == 0) {
		rc = reals(&db, argv[2]);
	} else {
		rc = verify(db);
	}
	sqlite3_close(db);
	return rc;
}

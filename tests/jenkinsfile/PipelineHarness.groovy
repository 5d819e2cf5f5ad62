// Runs a declarative Jenkinsfile under plain Groovy with the pipeline DSL stubbed, in
// the manner of JenkinsPipelineUnit: every DSL call is recorded, closures are run in
// order, `post` blocks run by the build's result, and `sh` either records the command
// or runs it for real. A Jenkinsfile that loads a shared library (`@Library('x') _`)
// gets the library's global steps (vars/NAME.groovy, called as NAME(...)) and its
// resources (libraryResource), from the library's directory, as Jenkins loads them.
//
//   groovy PipelineHarness.groovy JENKINSFILE PARAMS_JSON OPTIONS_JSON
//   groovy PipelineHarness.groovy --serve
//
// --serve runs pipeline after pipeline in one JVM (its start and Groovy's are most of a
// run's cost): each line of stdin a JSON request {jenkinsfile, params, options}, each
// answered by one line of stdout, "@@pipeline " and the JSON document below.
//
// OPTIONS_JSON:
//   dir:       the workspace (default: the current directory): where sh commands run
//   library:   the shared library's directory (vars/, resources/)
//   reject_input: true to answer `input` with a no (the build ends ABORTED)
//   execute:   true to run every sh command for real (bash -c, in the current directory)
//   real:      prefixes of commands run for real even when not executing (e.g. "invoke plan"):
//              queries, whose answer a served harness keeps for the same command, workspace
//              and environment
//   responses: {prefix: stdout} canned stdout for recorded commands
//   fail_on:   a substring; a recorded sh command containing it fails (exit 1): FAILURE
//   abort_on:  a substring; an sh command containing it (recorded or executed) is
//              interrupted as it starts, as a stage `timeout` firing or a user's abort
//              does: ABORTED
//   agents:    [{dir, env}]: the agents `node` steps get, in turn (a workspace of each's
//              own, and variables its commands see, e.g. its checkout's config); none:
//              `node` runs its body where the build is
//
// `parallel` runs its branches on threads of their own, all at once, as Jenkins does, and
// fails (once every branch has ended) with the first branch's failure.
// Prints one JSON document: calls, stages, result, parameters, options, post.

import groovy.json.JsonOutput
import groovy.json.JsonSlurper

class PipelineFailed extends RuntimeException {
    String result = 'FAILURE'
    PipelineFailed(String msg) { super(msg) }
    PipelineFailed(String msg, String result) { super(msg); this.result = result }
}

// Which post conditions run for a build result, in the order Jenkins runs them.
class PostConditions {
    static List forResult(String result) {
        def matches = [always: true, aborted: result == 'ABORTED', failure: result == 'FAILURE',
                       success: result == 'SUCCESS', unstable: result == 'UNSTABLE',
                       unsuccessful: result != 'SUCCESS', cleanup: true]
        return ['always', 'aborted', 'failure', 'success', 'unstable', 'unsuccessful',
                'cleanup'].findAll { matches[it] }
    }
}

// Collects the calls inside a section (options, post) by name. A top-level class on
// purpose: Groovy routes an anonymous inner class's missing methods to its outer object.
class SectionCollector {
    Map blocks = [:]
    List names = []

    def methodMissing(String name, Object args) {
        Object[] a = args as Object[]
        names << name
        if (a.length > 0 && a[-1] instanceof Closure) blocks[name] = a[-1]
        return null
    }
}

class ParameterCollector {
    List defs = []

    def choice(Map m) { defs << ([type: 'choice'] + m) }
    def string(Map m) { defs << ([type: 'string'] + m) }
    def booleanParam(Map m) { defs << ([type: 'boolean'] + m) }
}

// Where a thread of the build is: its stage, the variables withEnv set, the agent's
// workspace. A parallel branch's thread starts where its parent was.
class Where extends InheritableThreadLocal<Map> {
    protected Map initialValue() { [stage: null, env: [], dir: null, branch: null] }
    protected Map childValue(Map parent) { new LinkedHashMap(parent) }
}

abstract class PipelineScript extends Script {
    static final Where WHERE = new Where()
    List calls = Collections.synchronizedList([])
    List stageNames = Collections.synchronizedList([])
    List parameterDefs = []
    List optionDefs = []
    List postRan = []
    Map harness = [:]

    void configure(Map opts) { harness = opts }
    // The queries' answers (`real`), kept while the harness serves
    static Map answers = Collections.synchronizedMap([:])

    Map here() { WHERE.get() }
    String workspace() { here().dir ?: harness.dir ?: System.getProperty('user.dir') }
    Closure postBlock = null
    Closure stagesBlock = null

    def propertyMissing(String name) {
        if (name == 'any' || name == 'none' || name == 'scm') return name
        throw new MissingPropertyException(name, getClass())
    }

    private def runClosure(Closure body) {
        body.resolveStrategy = Closure.DELEGATE_FIRST
        body.delegate = this
        return body.call()
    }

    def methodMissing(String name, Object args) {
        Object[] a = args as Object[]
        def library = callLibraryStep(name, a)
        if (library) return library.value
        if (a.length > 0 && a[-1] instanceof Closure) {
            calls << [step: name, args: a.length > 1 ? a[0..-2].collect { it.toString() } : [], stage: currentStage]
            return runClosure((Closure) a[-1])
        }
        calls << [step: name, args: a.collect { it instanceof Map ? it : it.toString() }, stage: currentStage]
        return null
    }

    // -- the declarative skeleton ------------------------------------------------------
    def pipeline(Closure body) {
        String result = 'SUCCESS'
        String error = null
        // Declarative semantics: the sections are read first, then the stages run, then
        // the post conditions that match the result.
        runClosure(body)
        try {
            if (stagesBlock != null) runClosure(stagesBlock)
        } catch (PipelineFailed e) {
            result = e.result
            error = e.message
        }
        binding.getVariable('currentBuild').currentResult = result
        if (postBlock != null) {
            def collector = new SectionCollector()
            postBlock.resolveStrategy = Closure.DELEGATE_ONLY
            postBlock.delegate = collector
            postBlock.call()
            for (String when : PostConditions.forResult(result)) {
                if (collector.blocks[when]) {
                    postRan << when
                    here().stage = "post:${when}"
                    runClosure((Closure) collector.blocks[when])
                }
            }
        }
        return [result: result, error: error]
    }

    def parameters(Closure body) {
        def collector = new ParameterCollector()
        body.resolveStrategy = Closure.DELEGATE_ONLY
        body.delegate = collector
        body.call()
        parameterDefs.addAll(collector.defs)
    }

    def options(Closure body) {
        def collector = new SectionCollector()
        body.resolveStrategy = Closure.DELEGATE_ONLY
        body.delegate = collector
        body.call()
        optionDefs.addAll(collector.names)
    }

    def post(Closure body) { postBlock = body }

    def stages(Closure body) { stagesBlock = body }

    def stage(String name, Closure body) {
        stageNames << name
        String outer = currentStage
        here().stage = name
        try {
            return runClosure(body)
        } finally {
            here().stage = outer
        }
    }

    // -- steps with behaviour ------------------------------------------------------------
    // Variables withEnv sets for the sh steps inside it (here().env); "PATH+X=dir" puts
    // dir first on PATH, as Jenkins does.
    def withEnv(List vars, Closure body) {
        calls << [step: 'withEnv', args: vars.collect { it.toString() }, stage: currentStage]
        def saved = here().env
        here().env = saved + vars.collect { it.toString() }
        try {
            return runClosure(body)
        } finally {
            here().env = saved
        }
    }

    def node(String label, Closure body) {
        calls << [step: 'node', args: [label], stage: currentStage]
        List agents = harness.agents ?: []
        if (!agents) return runClosure(body)
        Map agent
        synchronized (harness) {
            int turn = harness.turn ?: 0
            harness.turn = turn + 1
            agent = agents[turn % agents.size()]
        }
        def saved = new LinkedHashMap(here())
        here().dir = agent.dir
        here().env = here().env + (agent.env ?: [:]).collect { k, v -> "${k}=${v}".toString() }
        try {
            return runClosure(body)
        } finally {
            here().dir = saved.dir
            here().env = saved.env
        }
    }

    def parallel(Map branches) {
        def names = branches.keySet().findAll { it != 'failFast' }.collect { it.toString() }
        calls << [step: 'parallel', args: names, stage: currentStage]
        List failures = Collections.synchronizedList([])
        List threads = names.collect { String name ->
            Closure body = (Closure) branches[name]
            Thread.start("branch-${name}") {
                here().branch = name
                try {
                    runClosure(body)
                } catch (Throwable e) {
                    failures << e
                }
            }
        }
        threads*.join()
        if (failures) {
            def first = failures[0]
            throw first instanceof PipelineFailed ? first :
                new PipelineFailed("branch failed: ${first}")
        }
        return null
    }

    def sh(String script) { return sh([script: script]) }

    def sh(Map m) {
        String script = m.script
        List envOverlay = here().env
        calls << [step: 'sh', args: [script], stage: currentStage, env: envOverlay,
                  branch: here().branch, dir: workspace()]
        if (harness.abort_on && script.contains(harness.abort_on)) {
            // interrupted as it starts (a timeout, an abort): it never finishes
            throw new PipelineFailed("interrupted: ${script}", 'ABORTED')
        }
        boolean real = harness.execute || (harness.real ?: []).any { script.startsWith(it) }
        String stdout = ''
        int status = 0
        if (real) {
            // A query asked again (not an executed command): its first answer
            def key = harness.execute ? null : [workspace(), script, envOverlay]
            def answer = key == null ? null : answers[key]
            if (answer == null) {
                def pb = new ProcessBuilder('bash', '-c', script)
                pb.directory(new File(workspace()))
                pb.redirectError(ProcessBuilder.Redirect.INHERIT)
                for (String v : envOverlay) {
                    def (String k, String value) = v.split('=', 2) as List
                    if (k.startsWith('PATH+')) {
                        pb.environment().put('PATH', value + ':' + pb.environment().get('PATH'))
                    } else {
                        pb.environment().put(k, value)
                    }
                }
                def proc = pb.start()
                String out = proc.inputStream.text
                answer = [out, proc.waitFor()]
                if (key != null) answers[key] = answer
            }
            stdout = answer[0]
            status = answer[1]
        } else {
            def canned = (harness.responses ?: [:]).find { k, v -> script.startsWith(k) }
            stdout = canned ? canned.value : ''
            status = (harness.fail_on && script.contains(harness.fail_on)) ? 1 : 0
        }
        if (m.returnStatus) return status
        if (status != 0) throw new PipelineFailed("script returned exit code ${status}: ${script}")
        return m.returnStdout ? stdout : null
    }

    def readJSON(Map m) { return new JsonSlurper().parseText(m.text) }

    def error(String message) { throw new PipelineFailed(message) }

    // -- a shared library's steps --------------------------------------------------------
    def libraryResource(String path) {
        calls << [step: 'libraryResource', args: [path], stage: currentStage]
        return new File(harness.library, "resources/${path}").text
    }

    def writeFile(Map m) {
        calls << [step: 'writeFile', args: [m.file], stage: currentStage]
        if (harness.execute) {  // what the executed commands read, as Jenkins writes it
            def file = new File(workspace(), m.file)
            file.parentFile.mkdirs()
            file.text = m.text
        }
        return null
    }

    def input(Map m) {
        calls << [step: 'input', args: [m], stage: currentStage]
        if (harness.reject_input) throw new PipelineFailed("input refused: ${m.message}", 'ABORTED')
        return null
    }

    // A library's global step, vars/NAME.groovy: parsed as Jenkins does (the same DSL),
    // sharing this build's record, its `call` run with the arguments given.
    def callLibraryStep(String name, Object[] args) {
        def file = new File(harness.library ?: '.', "vars/${name}.groovy")
        if (!harness.library || !file.exists()) return null
        def config = new org.codehaus.groovy.control.CompilerConfiguration()
        config.scriptBaseClass = PipelineScript.name
        def step = (PipelineScript) new GroovyShell(this.class.classLoader, binding, config)
            .parse(file)
        step.share(this)
        return [found: true, value: step.invokeMethod('call', args)]
    }

    // (read only: a Script's property writes go to its binding, shared by every thread)
    String getCurrentStage() { here().stage }

    void share(PipelineScript build) {
        calls = build.calls
        stageNames = build.stageNames
        parameterDefs = build.parameterDefs
        optionDefs = build.optionDefs
        postRan = build.postRan
        harness = build.harness
    }
}

// One pipeline: the Jenkinsfile run with these parameters, and what it did.
Map runPipeline(File jenkinsfile, Map params, Map opts) {
    PipelineScript.WHERE.remove()  // a served harness's thread starts each build afresh
    // `@Library('name') _` loads a library; here its directory comes with the options.
    def libraries = []
    def text = jenkinsfile.text.replaceAll(/(?m)^@Library\(['"]([^'"]+)['"]\)\s+_\s*$/) { all, lib ->
        libraries << lib
        return ''
    }
    if (libraries && !opts.library) throw new IllegalArgumentException("the Jenkinsfile loads ${libraries}: pass its directory as library")

    def config = new org.codehaus.groovy.control.CompilerConfiguration()
    config.scriptBaseClass = PipelineScript.name
    def binding = new Binding([params: params,
                               env: [WORKSPACE: opts.dir ?: System.getProperty('user.dir')],
                               currentBuild: [result: null, description: null]])
    def shell = new GroovyShell(this.class.classLoader, binding, config)
    PipelineScript script = (PipelineScript) shell.parse(text, jenkinsfile.name.replace('-', '_'))
    script.configure(opts)
    def outcome = script.run()
    return [
        libraries : libraries,
        result    : outcome?.result,
        error     : outcome?.error,
        calls     : script.calls,
        stages    : script.stageNames,
        parameters: script.parameterDefs,
        options   : script.optionDefs,
        post      : script.postRan,
        env       : binding.getVariable('env'),
    ]
}

if (args.length == 1 && args[0] == '--serve') {
    def input = new BufferedReader(new InputStreamReader(System.in, 'UTF-8'))
    String line
    while ((line = input.readLine()) != null) {
        def request = new JsonSlurper().parseText(line)
        def answer
        try {
            answer = runPipeline(new File(request.jenkinsfile), request.params, request.options)
        } catch (Throwable e) {  // the harness's own failure, told and served on
            def trace = new StringWriter()
            e.printStackTrace(new PrintWriter(trace))
            answer = [harness_error: trace.toString()]
        }
        println '@@pipeline ' + JsonOutput.toJson(answer)
        System.out.flush()
    }
} else {
    def opts = args.length > 2 ? new JsonSlurper().parseText(args[2]) : [:]
    println JsonOutput.toJson(runPipeline(new File(args[0]), new JsonSlurper().parseText(args[1]), opts))
}

// The deploy pipeline, as a Jenkins shared library step: a team's Jenkinsfile is
//
//     @Library('deploylib') _
//     deploylibPipeline(tool: 'deploylib==0.2.0')
//
// One pipeline for every procedure. Its stages are not written out per mode: they come
// from the plan (`invoke plan --json`), one Jenkins stage per planned stage, each running
// `invoke step`, so it cannot drift from the step library. A group stage (the in-place
// `rollout`, the per-region `regions`) is one Jenkins stage: one process runs its batches
// or its regions, all of which share the run's state. With jenkins.region_agents (an
// agent label), a per-region group's regions run instead as parallel branches, one per
// region, each on an agent of that label: they share the run through its store.
//
// The test-and-promote job a bake hands off to is this same pipeline with BAKE_RUN set (and
// ENV): the run is read from the environment's store, where the bake saved it; its bake
// stages are done already, and only its release stages run here.
//
// Its parameters are the job's own, as `invoke jenkins.setup` makes it from deploy.toml
// (ENV: a choice of its environments, none by default); the pipeline declares none, so a
// build never falls back to an environment it did not name.
//
// What the step takes (its map):
//   tool:  what the agent installs into a virtualenv of its own, a pip requirement
//          ('deploylib==0.2.0', with --hash=sha256:… to pin the wheel's bytes), or a path
//          to a wheel or a source tree. The dependencies come hashed from this library.
//
// Per environment, from deploy.toml (`invoke jenkins.settings`, read before anything is
// bound): the AWS credentials id bound around the tool (jenkins.credentials, default
// `deploy-aws-<env>`), whether a person approves the release phase (jenkins.approval),
// and each stage's timeout, derived from the tool's own timeouts.
//
// Plugins: Pipeline, Pipeline Utility Steps (readJSON), Timestamper, Credentials Binding,
// AWS Credentials (the AWS binding), JUnit, Pipeline: Input Step.
//
// The Jenkins API token the tool uses to hand off and record hotfixes: DEPLOY_JENKINS_TOKEN
// (default `deploy-jenkins-token`, secret text). Credentials are bound only around the
// commands that need them, never echoed.

// Single-quote a value for sh, as shlex.quote does.
def q(value) {
    return "'" + value.toString().replace("'", "'\"'\"'") + "'"
}

// The environment's credentials, bound around one tool command at a time.
def credentials() {
    return [
        [$class: 'AmazonWebServicesCredentialsBinding',
         credentialsId: settings.credentials,
         accessKeyVariable: 'AWS_ACCESS_KEY_ID', secretKeyVariable: 'AWS_SECRET_ACCESS_KEY'],
        string(credentialsId: env.DEPLOY_JENKINS_TOKEN ?: 'deploy-jenkins-token',
               variable: 'JENKINS_API_TOKEN'),
    ]
}

// Run a body with the tool's virtualenv (the Tool stage made it; `bin`: the one an
// agent of a parallel branch made) first on PATH.
def withTool(Closure body) {
    return withToolAt(env.DEPLOY_TOOL_BIN, body)
}

def withToolAt(String bin, Closure body) {
    withEnv(["PATH+DEPLOYLIB=${bin}"]) {
        return body()
    }
}

// Run `invoke ARGS` with the credentials bound (with the tool at `bin`, when given).
def tool(String args, String bin = null) {
    withToolAt(bin ?: env.DEPLOY_TOOL_BIN) {
        withCredentials(credentials()) {
            sh "invoke ${args}"
        }
    }
}

// A fresh agent has Python: the tool and its pinned, hashed dependencies go into a
// virtualenv in the workspace. Returns its bin directory.
def setUpTool(String toolSpec) {
    for (String name : ['tool-env.sh', 'requirements.lock', 'requirements-build.lock']) {
        writeFile file: ".deploylib/${name}", text: libraryResource("deploylib/${name}")
    }
    return sh(script: "bash .deploylib/tool-env.sh ${q(toolSpec)} " +
                      '.deploylib/requirements.lock .deploylib/requirements-build.lock',
              returnStdout: true).trim()
}

// A per-region group on parallel agents (jenkins.region_agents, a label): one branch per
// region, each on an agent of its own with the tool set up there, running that region's
// lane (`invoke step GROUP --region R`). No workspace is shared: each lane reads the run
// from the environment's store and writes its own part back; a lane that fails stops the
// others before their next stage, as the regions of one process do. The group is ended
// afterwards, here, by the step without a region.
def regionBranches(Map s, String toolSpec) {
    def branches = [:]
    for (String r : settings.regions) {
        String region = r  // each branch its own
        branches[region] = {
            node(settings.region_agents) {
                checkout scm
                String bin = setUpTool(toolSpec)
                try {
                    tool("step ${q(s.name)} --run ${q(env.RUN_ID)} --region ${q(region)}", bin)
                } finally {
                    if (s.publishes_junit) {
                        junit allowEmptyResults: true, testResults: run.paths.junit
                    }
                }
            }
        }
    }
    parallel branches
}

// The same, returning what it prints.
def toolOutput(String args) {
    withTool {
        withCredentials(credentials()) {
            return sh(script: "invoke ${args}", returnStdout: true)
        }
    }
}

// What the tool prints without any credentials (it reads deploy.toml only).
def readOnly(String args) {
    withTool {
        return sh(script: "invoke ${args}", returnStdout: true)
    }
}

// (`given`, not `options`: a variable of that name would shadow the options section.)
def call(Map given = [:]) {
    String toolSpec = given.tool ?: 'deploylib'
    pipeline {
        agent any
        options {
            disableConcurrentBuilds()
            timestamps()
            buildDiscarder(logRotator(numToKeepStr: '200'))
        }
        stages {
            // A fresh agent has Python: the tool and its pinned, hashed dependencies go
            // into a virtualenv kept between builds, one per tool and lock.
            stage('Tool') {
                steps {
                    script {
                        env.DEPLOY_TOOL_BIN = setUpTool(toolSpec)
                    }
                }
            }
            stage('Plan') {
                steps {
                    script {
                        // deploy.toml's word on this environment, before anything is bound:
                        // an ENV it does not define ends the build here, in one line.
                        settings = readJSON(text: readOnly(
                            "jenkins.settings --env ${q(params.ENV ?: '')}"))
                        def startArgs = params.BAKE_RUN ?
                            "--run ${q(params.BAKE_RUN)} --env ${q(settings.env)}" :
                            "--mode ${q(params.MODE)} --version ${q(params.VERSION)} --env ${q(settings.env)}" +
                                (params.ARTIFACT ? " --artifact ${q(params.ARTIFACT)}" : '')
                        // The run as the tool created it: its id, its procedure (a handoff's
                        // is the bake's) and where its files go (the config's state_dir).
                        run = readJSON(text: toolOutput("start ${startArgs} --json"))
                        env.RUN_ID = run.run_id
                        planned = readJSON(text: readOnly(
                            "plan --mode ${q(run.mode)} --env ${q(run.env)} --json"))
                        currentBuild.description = "${run.mode} ${run.version} to ${run.env}, run ${run.run_id}"
                        echo "run ${run.run_id}: ${planned.stages.collect { it.name }.join(' -> ')}"
                    }
                }
            }
            stage('Deploy') {
                steps {
                    script {
                        boolean approved = false
                        for (s in planned.stages) {
                            if (params.BAKE_RUN && s.phase == 'bake') {
                                continue  // the bake ran these before handing off
                            }
                            // jenkins.approval: a person says yes before the first stage
                            // of the release phase (the bake, if any, is done: its images
                            // wait; a no ends the build and its cleanup removes them).
                            if (settings.approval && !approved && s.phase == 'release') {
                                stage('Approval') {
                                    timeout(time: 24, unit: 'HOURS') {
                                        input message: "Release ${run.version} to ${run.env} with ${run.mode}?",
                                              ok: "Release ${run.version}"
                                    }
                                }
                                approved = true
                            }
                            stage(s.name) {
                                timeout(time: settings.stage_minutes[s.name] ?: 60, unit: 'MINUTES') {
                                    try {
                                        if (s.kind == 'per_region' && settings.region_agents) {
                                            regionBranches(s, toolSpec)
                                        }
                                        tool("step ${q(s.name)} --run ${q(env.RUN_ID)}")
                                    } finally {
                                        // The stage that runs smoke tests (alone, or in each
                                        // region of a group): the built-in checks and the
                                        // team's pytest smoke tests, passed or failed.
                                        if (s.publishes_junit) {
                                            junit allowEmptyResults: true, testResults: run.paths.junit
                                        }
                                    }
                                }
                            }
                        }
                        // fold = "after-deploy" (the tool says so in `start --json`): the
                        // live release imaged into the live server groups' launch
                        // templates, a run of its own once this one is done, so new
                        // instances boot without installing it. The release is live
                        // already: a failed fold leaves it so, and cleans up after itself.
                        if (run.fold_after) {
                            stage('fold') {
                                timeout(time: settings.fold_minutes, unit: 'MINUTES') {
                                    tool("fold --env ${q(run.env)}")
                                }
                            }
                        }
                    }
                }
            }
        }
        post {
            always {
                script {
                    if (env.RUN_ID) {
                        // The run report: JSON and an HTML timeline of its stages.
                        withTool {
                            sh "invoke report --run ${q(env.RUN_ID)} --no-open --out ${q(run.paths.report)}"
                        }
                        archiveArtifacts artifacts: "${run.paths.state}, ${run.paths.run_dir}/**", allowEmptyArchive: true
                    }
                }
            }
            // Every end but success: a failed stage, a stage `timeout` that fired, a
            // refused approval or a user's abort (ABORTED, for which `failure` does not
            // run), an unstable build.
            unsuccessful {
                script {
                    if (env.RUN_ID && !params.KEEP_ON_ERROR) {
                        // Remove what the run created and never made live (a builder,
                        // images, candidates) and release the lock; the live fleet is not
                        // touched.
                        tool("cleanup --run ${q(env.RUN_ID)}")
                    }
                }
                echo "run ${env.RUN_ID} ended ${currentBuild.currentResult}; its state says which stage. Continue with: invoke resume --run ${env.RUN_ID}"
            }
        }
    }
}
